/* The gateway's off-thread work: a ring of queued items served by a few worker
 * threads, and a min-heap of deadlines served by one timer thread. Both have a
 * fixed capacity chosen at start, so a flood of slow partner calls costs a 503,
 * never memory. `lock` guards everything in struct http_defer; `work_cond` wakes
 * workers, `timer_cond` wakes the timer. */
#include "http/defer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/log.h"
#include "core/timeutil.h"

typedef struct {
  http_defer_fn fn;
  void *item;
} job_t;

typedef struct {
  int64_t due_ms;
  uint64_t seq; /* keeps equal deadlines in arrival order */
  http_defer_fn fn;
  void *item;
} timer_t_;

struct http_defer {
  pthread_mutex_t lock;
  pthread_cond_t work_cond, timer_cond;
  job_t *ring;
  int ring_cap, ring_head, ring_len;
  int running; /* jobs a worker is executing */
  timer_t_ *heap;
  int heap_cap, heap_len;
  uint64_t heap_seq;
  bool stopping, timers_closed, joined;
  int nworkers;
  char name[16];
  pthread_t *workers;
  pthread_t timer;
  bool has_timer; /* timer_cap 0: a pool of workers only */
};

static void *worker_main(void *arg) {
  http_defer_t *d = arg;
  pthread_setname_np(pthread_self(), d->name);
  pthread_mutex_lock(&d->lock);
  for (;;) {
    while (!d->stopping && d->ring_len == 0)
      pthread_cond_wait(&d->work_cond, &d->lock);
    if (d->ring_len == 0) break; /* stopping and drained */
    job_t j = d->ring[d->ring_head];
    d->ring_head = (d->ring_head + 1) % d->ring_cap;
    d->ring_len--;
    bool cancelled = d->stopping;
    d->running++;
    pthread_mutex_unlock(&d->lock);
    j.fn(j.item, cancelled);
    pthread_mutex_lock(&d->lock);
    d->running--;
  }
  pthread_mutex_unlock(&d->lock);
  return NULL;
}

static bool heap_less(const timer_t_ *a, const timer_t_ *b) {
  return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

/* Caller must hold d->lock. */
static timer_t_ heap_pop(http_defer_t *d) {
  timer_t_ top = d->heap[0];
  d->heap[0] = d->heap[--d->heap_len];
  for (int i = 0;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < d->heap_len && heap_less(&d->heap[l], &d->heap[m])) m = l;
    if (r < d->heap_len && heap_less(&d->heap[r], &d->heap[m])) m = r;
    if (m == i) break;
    timer_t_ t = d->heap[i];
    d->heap[i] = d->heap[m];
    d->heap[m] = t;
    i = m;
  }
  return top;
}

static void *timer_main(void *arg) {
  http_defer_t *d = arg;
  pthread_setname_np(pthread_self(), "http-timer");
  int64_t next_flush = time_mono_ms() + 1000;
  pthread_mutex_lock(&d->lock);
  for (;;) {
    int64_t now = time_mono_ms();
    if (d->heap_len > 0 && (d->timers_closed || d->heap[0].due_ms <= now)) {
      timer_t_ t = heap_pop(d);
      bool cancelled = d->timers_closed;
      pthread_mutex_unlock(&d->lock);
      t.fn(t.item, cancelled);
      pthread_mutex_lock(&d->lock);
      continue;
    }
    if (d->stopping && d->heap_len == 0) break;
    if (now >= next_flush) {
      pthread_mutex_unlock(&d->lock);
      log_flush_suppressed();
      pthread_mutex_lock(&d->lock);
      next_flush = now + 1000;
      continue;
    }
    int64_t until = next_flush;
    if (d->heap_len > 0 && d->heap[0].due_ms < until) until = d->heap[0].due_ms;
    int64_t wait_ms = until - now;
    struct timespec ts;
    time_deadline(wait_ms, &ts);
    pthread_cond_timedwait(&d->timer_cond, &d->lock, &ts);
  }
  pthread_mutex_unlock(&d->lock);
  return NULL;
}

int http_defer_start(const char *name, int workers, int queue_cap, int timer_cap,
                     http_defer_t **out) {
  *out = NULL;
  http_defer_t *d = calloc(1, sizeof(*d));
  if (!d) return -1;
  snprintf(d->name, sizeof(d->name), "%s", name);
  d->ring = calloc((size_t)queue_cap, sizeof(*d->ring));
  d->heap = calloc((size_t)(timer_cap > 0 ? timer_cap : 1), sizeof(*d->heap));
  d->workers = calloc((size_t)workers, sizeof(*d->workers));
  if (!d->ring || !d->heap || !d->workers) goto fail;
  d->ring_cap = queue_cap;
  d->heap_cap = timer_cap;
  pthread_mutex_init(&d->lock, NULL);
  pthread_cond_init(&d->work_cond, NULL);
  pthread_cond_init(&d->timer_cond, NULL);
  if (timer_cap > 0) {
    if (pthread_create(&d->timer, NULL, timer_main, d) != 0) goto fail_sync;
    d->has_timer = true;
  }
  for (; d->nworkers < workers; d->nworkers++)
    if (pthread_create(&d->workers[d->nworkers], NULL, worker_main, d) != 0) break;
  if (d->nworkers == 0) {
    http_defer_free(&d);
    return -1;
  }
  *out = d;
  return 0;
fail_sync:
  pthread_mutex_destroy(&d->lock);
  pthread_cond_destroy(&d->work_cond);
  pthread_cond_destroy(&d->timer_cond);
fail:
  free(d->ring);
  free(d->heap);
  free(d->workers);
  free(d);
  return -1;
}

int http_defer_submit(http_defer_t *d, http_defer_fn fn, void *item) {
  pthread_mutex_lock(&d->lock);
  if (d->stopping || d->ring_len == d->ring_cap) {
    pthread_mutex_unlock(&d->lock);
    return -1;
  }
  d->ring[(d->ring_head + d->ring_len) % d->ring_cap] = (job_t){fn, item};
  d->ring_len++;
  pthread_cond_signal(&d->work_cond);
  pthread_mutex_unlock(&d->lock);
  return 0;
}

int http_defer_at(http_defer_t *d, int64_t due_ms, http_defer_fn fn, void *item) {
  pthread_mutex_lock(&d->lock);
  if (d->timers_closed || d->heap_len == d->heap_cap) {
    pthread_mutex_unlock(&d->lock);
    return -1;
  }
  int i = d->heap_len++;
  d->heap[i] = (timer_t_){due_ms, d->heap_seq++, fn, item};
  while (i > 0 && heap_less(&d->heap[i], &d->heap[(i - 1) / 2])) {
    timer_t_ t = d->heap[i];
    d->heap[i] = d->heap[(i - 1) / 2];
    d->heap[(i - 1) / 2] = t;
    i = (i - 1) / 2;
  }
  if (i == 0) pthread_cond_signal(&d->timer_cond); /* a new earliest deadline */
  pthread_mutex_unlock(&d->lock);
  return 0;
}

void http_defer_flush_timers(http_defer_t *d) {
  pthread_mutex_lock(&d->lock);
  d->timers_closed = true;
  pthread_cond_signal(&d->timer_cond);
  pthread_mutex_unlock(&d->lock);
}

int http_defer_pending(http_defer_t *d) {
  pthread_mutex_lock(&d->lock);
  int n = d->ring_len + d->running;
  pthread_mutex_unlock(&d->lock);
  return n;
}

void http_defer_stop(http_defer_t *d) {
  if (!d) return;
  pthread_mutex_lock(&d->lock);
  if (d->joined) {
    pthread_mutex_unlock(&d->lock);
    return;
  }
  d->stopping = true;
  d->timers_closed = true;
  pthread_cond_broadcast(&d->work_cond);
  pthread_cond_signal(&d->timer_cond);
  pthread_mutex_unlock(&d->lock);
  for (int i = 0; i < d->nworkers; i++)
    pthread_join(d->workers[i], NULL);
  if (d->has_timer) pthread_join(d->timer, NULL);
  d->joined = true;
}

void http_defer_free(http_defer_t **pd) {
  http_defer_t *d = *pd;
  if (!d) return;
  http_defer_stop(d);
  pthread_mutex_destroy(&d->lock);
  pthread_cond_destroy(&d->work_cond);
  pthread_cond_destroy(&d->timer_cond);
  free(d->ring);
  free(d->heap);
  free(d->workers);
  free(d);
  *pd = NULL;
}
