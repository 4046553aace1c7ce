/* The event bus: topics (event types) fan out to queues by subscription; workers
 * drain each queue through its handler ("function"), which ends every message as
 * done, not ready, or failed. Fan-out happens inside the transaction that records
 * the event, so a message exists exactly when its event does.
 *
 * Threads: bus_start() starts a fixed pool of worker threads ("bus-N"). Each one
 * claims a batch of visible messages in one write transaction, runs the handlers,
 * and settles the batch in another; a keeper thread renews the leases of every batch
 * in flight. Shared, under bus_t's lock: the wake-up condition, the workers' lease
 * slots and each queue's partner outage (bus_unavailable). */
#ifndef IOTFIN_BUS_BUS_H
#define IOTFIN_BUS_BUS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "app.h"
#include "bus/policy.h"
#include "store/store.h"

typedef struct bus bus_t;

/* One message as a handler sees it. Everything is borrowed for the call. */
typedef struct {
  int64_t id; /* message id within its queue */
  const char *queue;
  json_t *event; /* the CloudEvent */
  const char *event_id, *type, *subject;
  json_t *data;       /* event["data"] */
  int receives;       /* this receive included */
  int64_t created_ms; /* when the message was enqueued */
} bus_msg_t;

typedef bus_outcome_t (*bus_handler_fn)(app_t *app, const bus_msg_t *msg);

/* A queue: what it subscribes to and who drains it. */
typedef struct {
  const char *name;
  const char *subscribes; /* event types separated by |; "x.*" matches a prefix */
  bus_handler_fn handler;
  bool fifo;                /* per subject: in order, one batch of it in flight at a time */
  bool retry_forever;       /* transient failures never dead-letter */
  int64_t not_ready_max_ms; /* 0: 7 days */
} bus_queue_t;

/* The queue table (bus/queues.c). Tests may replace it with bus_set_queues(). */
extern const bus_queue_t bus_queues[];
extern const int bus_queues_count;
void bus_set_queues(const bus_queue_t *queues, int n);
/* How long an idle worker sleeps before it looks for work on its own (200 ms; 0 sets
 * that back). Tests lengthen it to show that a change which makes messages ready
 * wakes the workers itself. */
void bus_set_idle_wait(int ms);
const bus_queue_t *bus_queue_find(const char *name);

/* Enqueues event seq on every queue subscribed to type. Called by events_record()
 * inside its transaction; returns 0 or a store error. */
int bus_fanout(store_tx_t *tx, int64_t event_seq, const char *type, const char *subject);
/* When exactly one queue subscribes to type: true, with that queue's name and the
 * group key of an event of subject (NULL for an unordered queue), so that
 * events_record can write the event and its queue row in one statement; it then
 * calls bus_fanout_written instead of bus_fanout. */
bool bus_single_fanout(const char *type, const char *subject, const char **queue,
                       const char **group_key);
int bus_fanout_written(store_tx_t *tx);

/* Starts nworkers worker threads. Returns 0 and *out, or -ERR_INTERNAL. */
int bus_start(app_t *app, int nworkers, bus_t **out);
/* Wakes idle workers (new messages were committed). Any thread, cheap. */
void bus_notify(bus_t *bus);
/* Lets handlers in progress finish (at most timeout_ms), then stops; *bus = NULL. */
void bus_stop(bus_t **bus, int timeout_ms);

/* Helpers for handlers. */
bus_outcome_t bus_done(void);
bus_outcome_t bus_not_ready(int64_t delay_ms);
bus_outcome_t bus_failed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bus_outcome_t bus_failed_permanent(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The partner this queue delivers to did not answer (5xx, timeout, refused
 * connection). Counted like bus_failed, but instead of backing off on its own the
 * message is parked and the queue enters an outage: one probe at a time (the head
 * of one group, every few hundred ms) until the partner answers, then every parked
 * message of the queue is released at once. */
bus_outcome_t bus_unavailable(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Effectively-once bookkeeping: 1 if (handler, event_id) is recorded as done,
 * 0 if not, or a store error. bus_mark_done records it (inside the transaction of
 * the side effect's state change where there is one) and returns 1 when this call
 * recorded it, 0 when it was recorded already. */
int bus_is_done(store_t *store, const char *handler, const char *event_id);
int bus_mark_done(store_tx_t *tx, const char *handler, const char *event_id);

/* Operations (CONTRACT section 8). Each returns 0 and a new JSON value in *out. */
int bus_queue_stats(app_t *app, json_t **out);
int bus_dead_letters(app_t *app, const char *queue, int64_t after_id, int limit, json_t **out,
                     int64_t *next);
int bus_redrive(app_t *app, const char *queue, json_t *ids, int *redriven);
int bus_alarms(app_t *app, json_t **out);

#endif
