/* Deletes what the retention window has let go of (see retention.h). Each table is
 * cleared oldest first, 500 rows a transaction, with a pause between batches. Tables
 * keyed by time-ordered ids (UUIDv7, or an autoincrement that grows with time) are
 * walked from their oldest key, so a sweep costs what it deletes, not the table size.
 * The SQL is the portable kind the store takes (row values, no rowid): PostgreSQL too. */
#include "services/retention.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"

#define BATCH 500
#define IDEMPOTENCY_MIN_MS (24LL * 3600 * 1000) /* CONTRACT section 4: replays for 24 h */

struct retention {
  app_t *app;
  pthread_t thread;
  /* Guarded by lock; the thread sleeps on cond so a stop need not wait out a pause. */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool stopping;
};

typedef struct {
  const char *table;
  const char *sql; /* deletes at most BATCH rows; binds as `types` says */
  const char *types;
} rule_t;

typedef struct {
  const rule_t *rule;
  const char *ts;    /* cutoff as RFC 3339 */
  const char *id;    /* cutoff as the smallest UUIDv7 of that millisecond */
  int64_t ms;        /* cutoff, unix ms */
  int64_t idem_ms;   /* idempotency cutoff */
  int64_t first_seq; /* events: the first one young enough to keep */
} sweep_t;

/* Every event older than the cutoff that no queue message points at. The events' seq
 * grows with their time, so "older" is "seq below the first young one". */
static const rule_t rules[] = {
    {"events",
     "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e WHERE e.seq < ? AND NOT "
     "EXISTS (SELECT 1 FROM queue_messages q WHERE q.event_seq = e.seq) ORDER BY e.seq LIMIT 500)",
     "F"},
    {"device_events",
     "DELETE FROM device_events WHERE seq IN (SELECT seq FROM device_events WHERE received_at < ? "
     "ORDER BY seq LIMIT 500)",
     "T"},
    {"commands",
     "DELETE FROM commands WHERE id IN (SELECT id FROM commands WHERE id < ? AND status IN "
     "('succeeded', 'failed', 'expired') ORDER BY id LIMIT 500)",
     "I"},
    {"handler_done",
     "DELETE FROM handler_done WHERE (handler, event_id) IN (SELECT handler, event_id FROM "
     "handler_done WHERE done_at < ? LIMIT 500)",
     "T"},
    {"idempotency",
     "DELETE FROM idempotency WHERE (principal, key) IN (SELECT principal, key FROM idempotency "
     "WHERE created_at_ms < ? LIMIT 500)",
     "D"},
    {"webhooks",
     "DELETE FROM webhooks WHERE (partner, id) IN (SELECT partner, id FROM webhooks WHERE "
     "received_at < ? LIMIT 500)",
     "T"},
    /* A session goes once its lifetime is over: while a revoked session could still have
     * unexpired tokens, its row is what keeps them refused (the broker included). */
    {"sessions",
     "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE id < ? AND expires_at_ms < ? "
     "ORDER BY id LIMIT 500)",
     "IM"},
    {"refresh_tokens",
     "DELETE FROM refresh_tokens WHERE hash IN (SELECT hash FROM refresh_tokens WHERE "
     "expires_at_ms < ? LIMIT 500)",
     "M"},
};

static int first_young_tx(store_tx_t *tx, void *arg) {
  sweep_t *s = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT COALESCE((SELECT seq FROM events WHERE time >= ? ORDER BY seq LIMIT "
                     "1), (SELECT COALESCE(MAX(seq), 0) + 1 FROM events))",
                     "s", s->ts);
  if (n > 0) s->first_seq = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  return n < 0 ? n : 0;
}

static int delete_tx(store_tx_t *tx, void *arg) {
  sweep_t *s = arg;
  const char *t = s->rule->types;
  /* At most two parameters, each named by a letter: F first young seq, T timestamp,
   * I id, D idempotency ms, M ms. */
  const char *sv[2] = {NULL, NULL};
  int64_t iv[2] = {0, 0};
  char types[3] = "";
  for (int i = 0; i < 2 && t[i]; i++) {
    switch (t[i]) {
    case 'T':
      sv[i] = s->ts, types[i] = 's';
      break;
    case 'I':
      sv[i] = s->id, types[i] = 's';
      break;
    case 'F':
      iv[i] = s->first_seq, types[i] = 'i';
      break;
    case 'D':
      iv[i] = s->idem_ms, types[i] = 'i';
      break;
    default:
      iv[i] = s->ms, types[i] = 'i';
      break;
    }
  }
  if (strlen(types) == 1)
    return types[0] == 's' ? store_exec(tx, NULL, s->rule->sql, types, sv[0])
                           : store_exec(tx, NULL, s->rule->sql, types, iv[0]);
  /* The one two-parameter rule: sessions (id, ms). */
  return store_exec(tx, NULL, s->rule->sql, "si", sv[0], iv[1]);
}

static void pause_ms(retention_t *r, int ms) {
  if (!r) return;
  struct timespec ts;
  time_deadline(ms, &ts);
  pthread_mutex_lock(&r->lock);
  if (!r->stopping) pthread_cond_timedwait(&r->cond, &r->lock, &ts);
  pthread_mutex_unlock(&r->lock);
}

static bool stopping(retention_t *r) {
  if (!r) return false;
  pthread_mutex_lock(&r->lock);
  bool s = r->stopping;
  pthread_mutex_unlock(&r->lock);
  return s;
}

static int64_t sweep(app_t *app, int64_t now_ms, retention_t *r) {
  sweep_t s = {0};
  char ts[40], id[40];
  s.ms = now_ms - app->cfg->retention_s * 1000;
  s.idem_ms =
      now_ms - (app->cfg->retention_s * 1000 > IDEMPOTENCY_MIN_MS ? app->cfg->retention_s * 1000
                                                                  : IDEMPOTENCY_MIN_MS);
  time_format_rfc3339(s.ms, ts, sizeof(ts));
  /* The smallest UUIDv7 of the cutoff's millisecond: every id below it is older. */
  snprintf(id, sizeof(id), "%08llx-%04llx-0000-0000-000000000000",
           (unsigned long long)((uint64_t)s.ms >> 16),
           (unsigned long long)((uint64_t)s.ms & 0xffff));
  s.ts = ts;
  s.id = id;
  int rc = store_read(app->store, first_young_tx, &s);
  if (rc < 0) return rc;
  int64_t total = 0;
  for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]) && !stopping(r); i++) {
    s.rule = &rules[i];
    int64_t table = 0;
    for (;;) {
      int n = store_write(app->store, delete_tx, &s);
      if (n < 0) return total ? total : n;
      table += n;
      if (n < BATCH || stopping(r)) break;
      pause_ms(r, 20); /* let requests have the writer between batches */
    }
    if (table) {
      char labels[64];
      snprintf(labels, sizeof(labels), "table=\"%s\"", rules[i].table);
      metrics_counter_add("iotfin_retention_deleted_total", labels, (double)table);
      log_info("retention", "deleted %lld row(s) of %s older than %s", (long long)table,
               rules[i].table, ts);
    }
    total += table;
  }
  return total;
}

int64_t retention_sweep(app_t *app, int64_t now_ms) { return sweep(app, now_ms, NULL); }

static void *retention_main(void *arg) {
  retention_t *r = arg;
  pthread_setname_np(pthread_self(), "retention");
  int64_t every = r->app->cfg->retention_s * 100; /* a tenth of the window, in ms */
  if (every < 1000) every = 1000;
  if (every > 60000) every = 60000;
  while (!stopping(r)) {
    pause_ms(r, (int)every);
    if (stopping(r)) break;
    int64_t n = sweep(r->app, time_now_ms(), r);
    if (n < 0) log_warn("retention", "sweep failed (%s); trying again later", errors_code((int)n));
  }
  return NULL;
}

int retention_start(app_t *app, retention_t **out) {
  *out = NULL;
  retention_t *r = calloc(1, sizeof(*r));
  if (!r) return -ERR_INTERNAL;
  r->app = app;
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->cond, NULL);
  metrics_describe("iotfin_retention_deleted_total", "counter",
                   "Rows deleted by retention, by table.");
  if (pthread_create(&r->thread, NULL, retention_main, r) != 0) {
    free(r);
    return -ERR_INTERNAL;
  }
  *out = r;
  return 0;
}

void retention_stop(retention_t **pr) {
  retention_t *r = *pr;
  if (!r) return;
  pthread_mutex_lock(&r->lock);
  r->stopping = true;
  pthread_cond_broadcast(&r->cond);
  pthread_mutex_unlock(&r->lock);
  pthread_join(r->thread, NULL);
  pthread_mutex_destroy(&r->lock);
  pthread_cond_destroy(&r->cond);
  free(r);
  *pr = NULL;
}
