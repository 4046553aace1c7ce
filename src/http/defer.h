/* Work the gateway keeps off libmicrohttpd's request threads: a small bounded pool
 * of worker threads (named by the caller: "http-worker" for handlers that wait on a
 * partner, "http-write" for requests that write), and one
 * timer thread ("http-timer") that fires at a deadline (the partner mock's
 * delay_ms) without holding a thread per waiting request. Both queues are bounded:
 * a full queue refuses at once and the caller answers 503. The gateway suspends
 * the connection before it hands an item over; the callback resumes it.
 * The timer thread also flushes the log's suppression summaries once a second. */
#ifndef IOTFIN_HTTP_DEFER_H
#define IOTFIN_HTTP_DEFER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct http_defer http_defer_t;

/* Runs item's work. cancelled is true when the pool or timer stops before the
 * item was due or picked up: the callback must still answer and resume. */
typedef void (*http_defer_fn)(void *item, bool cancelled);

/* Starts `workers` worker threads named `name` (at most 15 characters) with a queue
 * of queue_cap items and a timer of timer_cap entries (0: no timer thread, and
 * http_defer_at refuses). Returns 0 and *out, or -1. */
int http_defer_start(const char *name, int workers, int queue_cap, int timer_cap,
                     http_defer_t **out);
/* Queues fn(item) for a worker. Returns 0, or -1 when the queue is full or the
 * pool is stopping (fn is then not called). Any thread. */
int http_defer_submit(http_defer_t *d, http_defer_fn fn, void *item);
/* Calls fn(item) on the timer thread at due_ms (time_mono_ms clock). Returns 0, or
 * -1 when the timer is full or stopping (fn is then not called). Any thread. */
int http_defer_at(http_defer_t *d, int64_t due_ms, http_defer_fn fn, void *item);
/* Fires every timer entry now (cancelled = true) and refuses new ones. */
void http_defer_flush_timers(http_defer_t *d);
/* Waiting calls and running work: items queued or running on a worker. */
int http_defer_pending(http_defer_t *d);
/* Stops: queued, not started work is called with cancelled = true, running work
 * finishes, timers fire cancelled; then the threads are joined. Afterwards submit
 * and at refuse (-1), so d stays safe to call until it is freed. */
void http_defer_stop(http_defer_t *d);
/* Stops if needed, then frees *d and sets it to NULL. */
void http_defer_free(http_defer_t **d);

#endif
