/* Queues on top of the store: fan-out, claim, settle, dead letters, alarms and the
 * operations queries. Claims and settlements are store_write() transactions, so the
 * store's group commit batches the work of all workers into few fsyncs. */
#include "bus/bus.h"

#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "services/events.h"

#define CLAIM_BATCH 64
#define RECLAIM_EVERY_MS 250
#define MAX_WORKERS 16
#define IDLE_WAIT_MS 200
#define MAX_QUEUES 32
#define PROBE_MAX_MS 500

struct bus {
  app_t *app;
  pthread_t threads[MAX_WORKERS];
  int nthreads;
  pthread_t keeper;
  /* lock guards everything below; cond signals stopping and wake_seq. */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool stopping;
  uint64_t wake_seq;
  /* Each worker's batch as claimed: the keeper renews all of its leases together,
   * so that a batch never loses part of a FIFO group while its head still runs.
   * renewed_mono: when these leases were last written (claim, renewal, early
   * settlement); a worker whose leases may have run out stops running its batch. */
  struct {
    int n;
    uint64_t gen;
    int64_t renewed_mono;
    int64_t id[CLAIM_BATCH], lease[CLAIM_BATCH];
  } slots[MAX_WORKERS];
  /* Partner outages by queue (index in the queue table): while `on`, the queue's
   * messages are left alone except for one probe every probe_every_ms(). */
  struct {
    bool on, probing;
    int64_t next_probe_mono, since_mono;
    int64_t last_probe_id; /* probes go round the groups, so one bad head cannot
                              keep a whole queue in an outage */
  } outage[MAX_QUEUES];
};

/* Bumped by bus_fanout on the writer thread; a commit wakes the workers only when
 * it may have added messages, so the workers' own claims do not keep them awake. */
static _Atomic uint64_t fanned_out;
static uint64_t fanned_seen; /* writer thread only */

static const bus_queue_t *queues = bus_queues;
static int nqueues = -1;

static _Atomic int idle_wait_ms = IDLE_WAIT_MS;

void bus_set_idle_wait(int ms) { atomic_store(&idle_wait_ms, ms > 0 ? ms : IDLE_WAIT_MS); }

void bus_set_queues(const bus_queue_t *q, int n) {
  queues = q;
  nqueues = n;
}

static int queue_count(void) { return nqueues < 0 ? bus_queues_count : nqueues; }

const bus_queue_t *bus_queue_find(const char *name) {
  for (int i = 0; i < queue_count(); i++)
    if (strcmp(queues[i].name, name) == 0) return &queues[i];
  return NULL;
}

static bool subscribed(const char *list, const char *type) {
  size_t tl = strlen(type);
  for (const char *p = list; p && *p;) {
    const char *bar = strchr(p, '|');
    size_t l = bar ? (size_t)(bar - p) : strlen(p);
    if (l >= 2 && p[l - 1] == '*' && p[l - 2] == '.') {
      if (tl >= l - 1 && memcmp(p, type, l - 1) == 0) return true;
    } else if (l == tl && memcmp(p, type, l) == 0) {
      return true;
    }
    p = bar ? bar + 1 : NULL;
  }
  return false;
}

/* Messages became ready in tx: this instance's workers wake when it commits (the
 * commit hook), other instances' on the notification. */
static int wake_on_commit(store_tx_t *tx) {
  atomic_fetch_add(&fanned_out, 1);
  return store_notify(tx, "queue", NULL);
}

int bus_fanout(store_tx_t *tx, int64_t seq, const char *type, const char *subject) {
  int64_t now = time_now_ms();
  int queued = 0;
  for (int i = 0; i < queue_count(); i++) {
    if (!subscribed(queues[i].subscribes, type)) continue;
    int rc =
        store_exec_nowait(tx,
                          "INSERT INTO queue_messages (queue, event_seq, group_key, visible_at_ms,"
                          " created_at_ms) VALUES (?, ?, ?, ?, ?)",
                          "sisii", queues[i].name, seq, queues[i].fifo ? subject : NULL, now, now);
    if (rc < 0) return rc;
    /* An event no queue takes (a queued command) wakes nobody: every worker would
     * look for work in vain after each such commit. */
    if (!queued++ && (rc = wake_on_commit(tx)) < 0) return rc;
  }
  return 0;
}

bool bus_single_fanout(const char *type, const char *subject, const char **queue,
                       const char **group_key) {
  int found = -1;
  for (int i = 0; i < queue_count(); i++) {
    if (!subscribed(queues[i].subscribes, type)) continue;
    if (found >= 0) return false;
    found = i;
  }
  if (found < 0) return false;
  *queue = queues[found].name;
  *group_key = queues[found].fifo ? subject : NULL;
  return true;
}

int bus_fanout_written(store_tx_t *tx) { return wake_on_commit(tx); }

static bus_outcome_t outcome(bus_result_t r, int64_t delay, const char *fmt, va_list ap) {
  bus_outcome_t o = {.result = r, .delay_ms = delay};
  if (fmt) vsnprintf(o.reason, sizeof(o.reason), fmt, ap);
  return o;
}

bus_outcome_t bus_done(void) {
  bus_outcome_t o = {.result = BUS_DONE};
  return o;
}

bus_outcome_t bus_not_ready(int64_t delay_ms) {
  bus_outcome_t o = {.result = BUS_NOT_READY, .delay_ms = delay_ms};
  return o;
}

bus_outcome_t bus_failed(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  bus_outcome_t o = outcome(BUS_FAILED, 0, fmt, ap);
  va_end(ap);
  return o;
}

bus_outcome_t bus_failed_permanent(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  bus_outcome_t o = outcome(BUS_FAILED_PERMANENT, 0, fmt, ap);
  va_end(ap);
  return o;
}

bus_outcome_t bus_unavailable(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  bus_outcome_t o = outcome(BUS_FAILED, 0, fmt, ap);
  va_end(ap);
  o.unavailable = true;
  return o;
}

typedef struct {
  const char *handler, *event_id;
} done_key_t;

static int is_done_tx(store_tx_t *tx, void *arg) {
  done_key_t *k = arg;
  return store_exec(tx, NULL, "SELECT 1 FROM handler_done WHERE handler = ? AND event_id = ?", "ss",
                    k->handler, k->event_id);
}

int bus_is_done(store_t *store, const char *handler, const char *event_id) {
  done_key_t k = {handler, event_id};
  int rc = store_read(store, is_done_tx, &k);
  return rc < 0 ? rc : rc > 0;
}

int bus_mark_done(store_tx_t *tx, const char *handler, const char *event_id) {
  char ts[32];
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  int rc = store_exec(tx, NULL,
                      "INSERT INTO handler_done (handler, event_id, done_at) VALUES (?, ?, ?) "
                      "ON CONFLICT (handler, event_id) DO NOTHING",
                      "sss", handler, event_id, ts);
  return rc < 0 ? rc : rc > 0;
}

/* --- claiming and settling ------------------------------------------------ */

/* FIFO order, in short (docs/ARCHITECTURE.md has the long form): a group (queue,
 * subject) is claimable only when no message of it is in flight, and then from its
 * oldest pending message (its head) on, with the ready messages right behind it
 * without a gap. One batch runs them in order; the first one that does not end done
 * takes every later one of its group back with it, in the same settlement. Leases
 * of a batch are renewed together and expire together, group by group. */

typedef struct {
  int64_t id, lease, created_ms;
  int receives;
  const bus_queue_t *queue;
  json_t *event;
  bus_outcome_t outcome;
  const store_rows_t *src; /* the claimed rows it came in */
  int row;                 /* its row there */
  char group[96];          /* FIFO group, "" for unordered queues */
  bool skip;               /* not run (an earlier one of its group did not end done, an
                              outage, a lost lease): give it back */
  bool ran;                /* the handler answered; settle it */
  bool settled;            /* written back */
} claimed_t;

typedef struct {
  app_t *app;
  bus_t *bus;
  claimed_t items[CLAIM_BATCH];
  int n;
  int probe_q;                         /* >= 0: a probe of that queue's outage */
  int64_t probe_after;                 /* the probe takes the first head after this id */
  int64_t waiting;                     /* probe found nothing: messages still waiting */
  int64_t claimed_ms;                  /* when the leases of the unsettled items started */
  store_rows_t *rows[CLAIM_BATCH + 1]; /* the claimed row sets, until the batch is done */
  int nrows;
} batch_t;

/* When a lease was last checked for expiry; any worker may do the next check. */
static _Atomic int64_t last_reclaim_ms;

#define CLAIM_COLUMNS                                                                              \
  "m.id, m.queue, m.receive_count, m.created_at_ms, m.lease, e.seq, e.id, e.type, e.source, "      \
  "e.subject, e.time, e.data, m.group_key, m.state"
#define FIFO_FOLLOWERS 15

static int queue_index(const bus_queue_t *q) {
  int i = (int)(q - queues);
  return i >= 0 && i < queue_count() && i < MAX_QUEUES ? i : -1;
}

/* How often a queue in an outage probes its partner: the retry base, at most
 * PROBE_MAX_MS, so that delivery resumes well within 2 s of the partner answering. */
static int64_t probe_every_ms(const app_t *app) {
  int64_t e = app->cfg->retry_base_ms;
  return e < 10 ? 10 : e > PROBE_MAX_MS ? PROBE_MAX_MS : e;
}

/* Appends " AND queue NOT IN ('a', ...)" for the queues in an outage to out (empty
 * when none): their messages wait for the probe. Names come from the compiled queue
 * table; one that is not a plain name is never written into SQL. */
static void outage_exclusion(bus_t *bus, char *out, size_t cap) {
  out[0] = 0;
  size_t len = 0;
  pthread_mutex_lock(&bus->lock);
  for (int i = 0; i < queue_count() && i < MAX_QUEUES; i++) {
    const char *name = queues[i].name;
    if (!bus->outage[i].on ||
        strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789._-") != strlen(name))
      continue;
    int w = snprintf(out + len, cap - len, "%s'%s'", len ? ", " : " AND queue NOT IN (", name);
    if (w < 0 || (size_t)w + 2 >= cap - len) break;
    len += (size_t)w;
  }
  pthread_mutex_unlock(&bus->lock);
  if (len) snprintf(out + len, cap - len, ")");
}

static void free_rows(batch_t *b) {
  for (int i = 0; i < b->nrows; i++)
    store_rows_free(&b->rows[i]);
  b->nrows = 0;
}

/* Statements that name several messages name this many (the last repeated to fill
 * them): one statement text, prepared once, and a round trip for up to 8 messages
 * on PostgreSQL instead of one each. */
#define MANY 8

/* Appends row i of rows, whose lease claim_tx just took, to the batch. */
static void append_item(batch_t *b, const bus_queue_t *q, const store_rows_t *rows, int i) {
  claimed_t *c = &b->items[b->n++];
  c->ran = c->settled = c->skip = false;
  c->id = store_rows_int(rows, i, 0);
  c->queue = q;
  c->receives = (int)store_rows_int(rows, i, 2) + 1;
  c->created_ms = store_rows_int(rows, i, 3);
  c->lease = store_rows_int(rows, i, 4) + 1;
  c->src = rows;
  c->row = i;
  snprintf(c->group, sizeof(c->group), "%s",
           store_rows_text(rows, i, 12) ? store_rows_text(rows, i, 12) : "");
  c->event = NULL; /* built by the worker after the commit: the writer's time is precious */
}

/* Which of the messages a lease_ids() took: all of them, or those listed in rows. */
typedef struct {
  bool all;
  store_rows_t *rows;
} taken_t;

#define LEASE_SQL                                                                                  \
  "UPDATE queue_messages SET state = 'in_flight', visible_at_ms = ?, "                             \
  "receive_count = receive_count + 1, lease = lease + 1, claimed_by = ? "                          \
  "WHERE id IN (?, ?, ?, ?, ?, ?, ?, ?) AND state != 'in_flight'"

/* Leases the messages id[0..n) (1 to MANY, distinct, each read as ready by this
 * transaction) that are not in flight, with one statement, and says which it took. */
static int lease_ids(store_tx_t *tx, batch_t *b, int64_t *id, int n, int64_t now, taken_t *taken) {
  *taken = (taken_t){0};
  for (int j = n; j < MANY; j++)
    id[j] = id[n - 1];
  int64_t visible = now + b->app->cfg->visibility_timeout_ms;
  if (store_tx_sole_writer(tx)) {
    /* Nobody else can have taken a ready message since this transaction read it, so
     * the count of changes says it all; RETURNING would nearly double the
     * statement's cost on SQLite. */
    int rc = store_exec(tx, NULL, LEASE_SQL, "isiiiiiiii", visible, b->app->instance_id, id[0],
                        id[1], id[2], id[3], id[4], id[5], id[6], id[7]);
    if (rc < 0) return rc;
    if (rc != n) {
      log_error("bus", "leased %d of %d ready messages with no other writer; claim undone", rc, n);
      return -ERR_INTERNAL;
    }
    taken->all = true;
    return 0;
  }
  int rc = store_exec(tx, &taken->rows, LEASE_SQL " RETURNING id", "isiiiiiiii", visible,
                      b->app->instance_id, id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]);
  if (rc < 0) store_rows_free(&taken->rows);
  return rc < 0 ? rc : 0;
}

static bool was_taken(const taken_t *taken, int64_t id) {
  if (taken->all) return true;
  for (int t = 0; t < store_rows_count(taken->rows); t++)
    if (store_rows_int(taken->rows, t, 0) == id) return true;
  return false;
}

/* Leases the messages of rows (a claim's candidates, each independent of the
 * others) to the batch, MANY to a statement, and appends those it took in their
 * order; one another instance took meanwhile is left out. Rows of a queue no longer
 * in the table become dead letters. Caller is in claim_tx. */
static int add_items(store_tx_t *tx, batch_t *b, const store_rows_t *rows, int n, int64_t now) {
  for (int from = 0; from < n; from += MANY) {
    int64_t id[MANY];
    const bus_queue_t *q[MANY];
    int k = 0;
    for (int i = from; i < n && i < from + MANY; i++) {
      q[i - from] = bus_queue_find(store_rows_text(rows, i, 1));
      if (!q[i - from]) {
        /* A queue removed from the table: its leftovers are dead letters, not lost. */
        char ts[32];
        time_format_rfc3339(now, ts, sizeof(ts));
        int rc = store_exec(tx, NULL,
                            "UPDATE queue_messages SET state = 'dead', last_error = 'queue no "
                            "longer exists', dead_at = ? WHERE id = ?",
                            "si", ts, store_rows_int(rows, i, 0));
        if (rc < 0) return rc;
        continue;
      }
      id[k++] = store_rows_int(rows, i, 0);
    }
    if (k == 0) continue;
    taken_t taken;
    int rc = lease_ids(tx, b, id, k, now, &taken);
    if (rc < 0) return rc;
    for (int i = from; i < n && i < from + MANY; i++)
      if (q[i - from] && was_taken(&taken, store_rows_int(rows, i, 0)))
        append_item(b, q[i - from], rows, i);
    store_rows_free(&taken.rows);
  }
  return 0;
}

/* Lease expiry, and parked messages of queues no longer in an outage. A FIFO group
 * comes back whole: when one of its in-flight messages outlived its lease, all of
 * them are ready again together, so the next claim starts from its head. */
static int sweep(store_tx_t *tx, batch_t *b, int64_t now) {
  int rc = store_exec(tx, NULL,
                      "UPDATE queue_messages SET state = 'ready' WHERE state = 'in_flight' AND "
                      "(visible_at_ms <= ? OR (group_key IS NOT NULL AND EXISTS (SELECT 1 FROM "
                      "queue_messages o WHERE o.queue = queue_messages.queue AND o.group_key = "
                      "queue_messages.group_key AND o.state = 'in_flight' AND o.visible_at_ms "
                      "<= ?)))",
                      "ii", now, now);
  if (rc < 0) return rc;
  if (rc > 0) log_warn("bus", "%d message(s) outlived their visibility timeout; ready again", rc);
  /* Normally the probe that ends an outage releases its queue; this catches a
   * message parked by a batch that settled just after that. */
  char excl[1024], sql[1400];
  outage_exclusion(b->bus, excl, sizeof(excl));
  snprintf(sql, sizeof(sql),
           "UPDATE queue_messages SET state = 'ready', visible_at_ms = ? WHERE state = 'parked'%s",
           excl);
  rc = store_exec(tx, NULL, sql, "i", now);
  return rc < 0 ? rc : 0;
}

/* A FIFO head brings the ready messages queued right behind it (up to the first
 * that is not ready): one worker runs them in order, so the group keeps its order
 * while many of its messages share one claim and one settlement. */
static int add_followers(store_tx_t *tx, batch_t *b, int h, int64_t now) {
  if (!b->items[h].group[0] || b->n >= CLAIM_BATCH) return 0;
  int64_t want = CLAIM_BATCH - b->n < FIFO_FOLLOWERS ? CLAIM_BATCH - b->n : FIFO_FOLLOWERS;
  store_rows_t *more = NULL;
  int m = store_exec(tx, &more,
                     "SELECT " CLAIM_COLUMNS " FROM queue_messages m "
                     "JOIN events e ON e.seq = m.event_seq WHERE m.queue = ? "
                     "AND m.group_key = ? AND m.id > ? AND m.state != 'dead' "
                     "ORDER BY m.id LIMIT ?",
                     "ssii", b->items[h].queue->name, b->items[h].group, b->items[h].id, want);
  if (m < 0) return m;
  if (!more) return 0;
  b->rows[b->nrows++] = more;
  /* A parked message behind a ready head (a redriven dead letter went before it):
   * the group stops there rather than skip it. */
  int ready = 0;
  while (ready < m && strcmp(store_rows_text(more, ready, 13), "ready") == 0)
    ready++;
  for (int from = 0; from < ready; from += MANY) {
    int k = ready - from < MANY ? ready - from : MANY;
    int64_t id[MANY];
    for (int j = 0; j < k; j++)
      id[j] = store_rows_int(more, from + j, 0);
    taken_t taken;
    int rc = lease_ids(tx, b, id, k, now, &taken);
    if (rc < 0) return rc;
    bool gap = false;
    for (int j = 0; j < k && rc >= 0; j++) {
      bool got = was_taken(&taken, id[j]);
      if (!gap && got) {
        append_item(b, b->items[h].queue, more, from + j);
        continue;
      }
      /* Not ours after all (another instance has it): the group stops before the
       * gap, and what this statement leased behind it is given back at once. */
      gap = true;
      if (got)
        rc = store_exec(tx, NULL,
                        "UPDATE queue_messages SET state = 'ready', visible_at_ms = ?, "
                        "receive_count = receive_count - 1 WHERE id = ? AND lease = ?",
                        "iii", now, id[j], store_rows_int(more, from + j, 4) + 1);
    }
    store_rows_free(&taken.rows);
    if (rc < 0) return rc;
    if (gap) break;
  }
  return 0;
}

/* On PostgreSQL a claim locks the rows it takes and passes over rows another
 * transaction holds, so claims of several instances never queue up behind each
 * other (SQLite has one writer and no row locks). */
static const char *skip_locked(const app_t *app) {
  return strcmp(store_backend(app->store), "postgres") == 0 ? " FOR UPDATE OF m SKIP LOCKED" : "";
}

static int claim_tx(store_tx_t *tx, void *arg) {
  batch_t *b = arg;
  b->n = 0;
  b->nrows = 0;
  int64_t now = time_now_ms();
  int64_t last = atomic_load(&last_reclaim_ms);
  if (now - last >= RECLAIM_EVERY_MS &&
      atomic_compare_exchange_strong(&last_reclaim_ms, &last, now)) {
    int rc = sweep(tx, b, now);
    if (rc < 0) return rc;
  }
  char excl[1024], sql[3000];
  outage_exclusion(b->bus, excl, sizeof(excl));
  store_rows_t *rows = NULL;
  /* Candidates: the oldest visible messages of unordered queues, and the head of
   * each FIFO group (its oldest message not dead) when nothing of the group is in
   * flight. Looking at heads only keeps a long backlog behind a busy head from
   * being scanned again at every claim. Every subquery in FROM has an alias, as
   * PostgreSQL 15 wants. */
  char cand[1600];
  snprintf(cand, sizeof(cand),
           "SELECT id FROM (SELECT id FROM queue_messages WHERE state = 'ready' "
           "AND group_key IS NULL AND visible_at_ms <= ?%s ORDER BY id LIMIT ?) u "
           "UNION ALL SELECT head FROM (SELECT MIN(id) AS head FROM queue_messages "
           "WHERE group_key IS NOT NULL AND state != 'dead'%s GROUP BY group_key, queue "
           "HAVING SUM(CASE WHEN state = 'in_flight' THEN 1 ELSE 0 END) = 0) f",
           excl, excl);
  const char *skip = skip_locked(b->app);
  /* PostgreSQL looks the candidates up as an array in the primary key: joined as a
   * subquery instead, its planner hashed the whole table (every message, backlog and
   * dead rows, read at every claim). */
  if (*skip)
    snprintf(sql, sizeof(sql),
             "SELECT " CLAIM_COLUMNS " FROM queue_messages m JOIN events e ON e.seq = "
             "m.event_seq WHERE m.id = ANY (ARRAY(%s)) AND m.state = 'ready' AND "
             "m.visible_at_ms <= ? ORDER BY m.id LIMIT ?%s",
             cand, skip);
  else
    snprintf(sql, sizeof(sql),
             "SELECT " CLAIM_COLUMNS " FROM (%s) c JOIN queue_messages m ON m.id = c.id "
             "JOIN events e ON e.seq = m.event_seq WHERE m.state = 'ready' AND "
             "m.visible_at_ms <= ? ORDER BY m.id LIMIT ?",
             cand);
  int n = store_exec(tx, &rows, sql, "iiii", now, (int64_t)CLAIM_BATCH, now, (int64_t)CLAIM_BATCH);
  if (n < 0) return n;
  b->rows[b->nrows++] = rows;
  int rc = add_items(tx, b, rows, n, now);
  if (rc < 0) return rc;
  int heads = b->n;
  for (int h = 0; h < heads; h++) {
    rc = add_followers(tx, b, h, now);
    if (rc < 0) return rc;
  }
  b->claimed_ms = time_mono_ms();
  return b->n;
}

/* Claims one message of queue b->probe_q in an outage, parked or visible, and for a
 * FIFO queue the followers of its group: the first claimable head after
 * b->probe_after, else the first one. Finding none, counts what still waits. */
static int probe_claim_tx(store_tx_t *tx, void *arg) {
  batch_t *b = arg;
  b->n = 0;
  b->nrows = 0;
  b->waiting = 0;
  const bus_queue_t *q = &queues[b->probe_q];
  int64_t now = time_now_ms();
  for (int pass = 0; pass < 2 && b->n == 0; pass++) {
    store_rows_t *rows = NULL;
    int64_t after = pass == 0 ? b->probe_after : 0;
    int n = store_exec(
        tx, &rows,
        q->fifo ? "SELECT " CLAIM_COLUMNS " FROM (SELECT MIN(id) AS head FROM queue_messages "
                  " WHERE queue = ? AND group_key IS NOT NULL AND state != 'dead' "
                  " GROUP BY group_key "
                  " HAVING SUM(CASE WHEN state = 'in_flight' THEN 1 ELSE 0 END) = 0) h "
                  "JOIN queue_messages m ON m.id = h.head JOIN events e ON e.seq = m.event_seq "
                  "WHERE (m.state = 'parked' OR (m.state = 'ready' AND m.visible_at_ms <= ?)) "
                  "AND m.id > ? ORDER BY m.id LIMIT 1"
                : "SELECT " CLAIM_COLUMNS " FROM queue_messages m "
                  "JOIN events e ON e.seq = m.event_seq WHERE m.queue = ? "
                  "AND (m.state = 'parked' OR (m.state = 'ready' AND m.visible_at_ms <= ?)) "
                  "AND m.id > ? ORDER BY m.id LIMIT 1",
        "sii", q->name, now, after);
    if (n < 0) return n;
    b->rows[b->nrows++] = rows;
    if (n > 0) {
      int rc = add_items(tx, b, rows, 1, now);
      if (rc < 0) return rc;
    }
    if (after == 0) break;
  }
  if (b->n > 0) {
    int rc = add_followers(tx, b, 0, now);
    if (rc < 0) return rc;
  } else {
    store_rows_t *rows = NULL;
    int rc = store_exec(tx, &rows,
                        "SELECT COUNT(*) FROM queue_messages WHERE queue = ? AND state IN "
                        "('ready', 'parked')",
                        "s", q->name);
    if (rc < 0) return rc;
    b->waiting = store_rows_int(rows, 0, 0);
    store_rows_free(&rows);
  }
  b->claimed_ms = time_mono_ms();
  return b->n;
}

typedef struct {
  const char *queue;
  int64_t now;
} release_t;

/* Ends an outage in the store: the queue's parked messages are visible now. */
static int release_tx(store_tx_t *tx, void *arg) {
  release_t *r = arg;
  return store_exec(tx, NULL,
                    "UPDATE queue_messages SET state = 'ready', visible_at_ms = ? "
                    "WHERE queue = ? AND state = 'parked'",
                    "is", r->now, r->queue);
}

/* Raises or updates the alarm of queue's dead-letter queue. Caller is in a tx. */
static int alarm_update(store_tx_t *tx, const char *queue) {
  char name[128], subject[160], ts[32];
  snprintf(name, sizeof(name), "dead-letters:%s", queue);
  snprintf(subject, sizeof(subject), "alarms/%s", name);
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  store_rows_t *rows = NULL;
  int rc = store_exec(tx, &rows,
                      "SELECT (SELECT COUNT(*) FROM queue_messages WHERE queue = ? AND state = "
                      "'dead'), (SELECT state FROM alarms WHERE name = ?)",
                      "ss", queue, name);
  if (rc < 0) return rc;
  int64_t count = store_rows_int(rows, 0, 0);
  bool raised = store_rows_text(rows, 0, 1) && strcmp(store_rows_text(rows, 0, 1), "alarm") == 0;
  store_rows_free(&rows);
  if (count > 0 && !raised) {
    rc = store_exec(tx, NULL,
                    "INSERT INTO alarms (name, queue, state, count, raised_at) VALUES "
                    "(?, ?, 'alarm', ?, ?) ON CONFLICT (name) DO UPDATE SET state = 'alarm', "
                    "count = excluded.count, raised_at = excluded.raised_at, cleared_at = NULL",
                    "ssis", name, queue, count, ts);
    if (rc < 0) return rc;
    log_warn("bus", "alarm %s raised: %lld dead letter(s)", name, (long long)count);
    return events_record(
        tx, "alarm.raised", subject,
        json_pack("{s:s,s:s,s:I}", "name", name, "queue", queue, "count", (json_int_t)count), NULL);
  }
  if (count == 0 && raised) {
    rc = store_exec(tx, NULL,
                    "UPDATE alarms SET state = 'ok', count = 0, cleared_at = ? WHERE name = ?",
                    "ss", ts, name);
    if (rc < 0) return rc;
    log_info("bus", "alarm %s cleared", name);
    return events_record(tx, "alarm.cleared", subject,
                         json_pack("{s:s,s:s}", "name", name, "queue", queue), NULL);
  }
  if (raised)
    return store_exec(tx, NULL, "UPDATE alarms SET count = ? WHERE name = ?", "is", count, name);
  return 0;
}

/* Settles the items whose handler ran or that were given back, and renews the
 * leases of those still waiting in the batch. */
/* Deletes the done messages of pairs (id, lease), n of them (1 to MANY), with one
 * statement; a message whose lease another claim took since is left alone. */
static int delete_done(store_tx_t *tx, int64_t pairs[][2], int n) {
  int64_t v[2 * MANY];
  for (int j = 0; j < MANY; j++) {
    v[2 * j] = pairs[j < n ? j : n - 1][0];
    v[2 * j + 1] = pairs[j < n ? j : n - 1][1];
  }
  /* A delete cannot conflict: nothing waits for its count. */
  int rc =
      store_exec_nowait(tx,
                        "DELETE FROM queue_messages WHERE (id = ? AND lease = ?) OR (id = ? AND "
                        "lease = ?) OR (id = ? AND lease = ?) OR (id = ? AND lease = ?) OR (id = ? "
                        "AND lease = ?) OR (id = ? AND lease = ?) OR (id = ? AND lease = ?) OR (id "
                        "= ? AND lease = ?)",
                        "iiiiiiiiiiiiiiii", v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8],
                        v[9], v[10], v[11], v[12], v[13], v[14], v[15]);
  return rc < 0 ? rc : 0;
}

static int settle_tx(store_tx_t *tx, void *arg) {
  batch_t *b = arg;
  int64_t now = time_now_ms();
  int64_t done[MANY][2];
  int ndone = 0;
  for (int i = 0; i < b->n; i++) {
    claimed_t *c = &b->items[i];
    if (c->settled) continue;
    if (c->skip) {
      /* Not run: back to ready at once, and this receive does not count. */
      int rc = store_exec(tx, NULL,
                          "UPDATE queue_messages SET state = 'ready', visible_at_ms = ?, "
                          "receive_count = receive_count - 1 WHERE id = ? AND lease = ?",
                          "iii", now, c->id, c->lease);
      if (rc < 0) return rc;
      continue;
    }
    if (!c->ran) {
      int rc = store_exec(tx, NULL,
                          "UPDATE queue_messages SET visible_at_ms = ? WHERE id = ? AND lease = ?",
                          "iii", now + b->app->cfg->visibility_timeout_ms, c->id, c->lease);
      if (rc < 0) return rc;
      continue;
    }
    bus_policy_t p = {b->app->cfg->retry_base_ms, b->app->cfg->retry_max_ms,
                      c->queue->retry_forever ? 0 : (int)b->app->cfg->max_receives,
                      c->queue->not_ready_max_ms ? c->queue->not_ready_max_ms : 7LL * 86400 * 1000};
    double rnd = (double)randombytes_uniform(1000000) / 1e6;
    bus_next_t next = bus_policy_next(&p, &c->outcome, c->receives, c->created_ms, now, rnd);
    int rc = 0;
    switch (next.kind) {
    case BUS_NEXT_DELETE:
      done[ndone][0] = c->id;
      done[ndone][1] = c->lease;
      if (++ndone == MANY) {
        rc = delete_done(tx, done, ndone);
        ndone = 0;
      }
      break;
    case BUS_NEXT_RETRY:
      /* A message whose partner did not answer waits for the queue's probe
       * (parked) instead of its own backoff. */
      rc = store_exec(
          tx, NULL,
          "UPDATE queue_messages SET state = ?, visible_at_ms = ?, "
          "receive_count = receive_count - ?, last_error = COALESCE(?, last_error) "
          "WHERE id = ? AND lease = ?",
          "siisii", c->outcome.unavailable ? "parked" : "ready",
          c->outcome.unavailable ? now : next.visible_at_ms, (int64_t)(next.count_receive ? 0 : 1),
          c->outcome.result == BUS_NOT_READY ? NULL : c->outcome.reason, c->id, c->lease);
      break;
    case BUS_NEXT_DEAD: {
      char ts[32], subject[128];
      time_format_rfc3339(now, ts, sizeof(ts));
      const char *why = next.why ? next.why : c->outcome.reason;
      rc = store_exec(tx, NULL,
                      "UPDATE queue_messages SET state = 'dead', dead_at = ?, last_error = ? "
                      "WHERE id = ? AND lease = ?",
                      "ssii", ts, why, c->id, c->lease);
      if (rc == 1) {
        log_warn("bus", "message %lld on %s dead-lettered after %d receive(s): %s",
                 (long long)c->id, c->queue->name, c->receives, why);
        snprintf(subject, sizeof(subject), "queues/%s", c->queue->name);
        const char *eid = json_string_value(json_object_get(c->event, "id"));
        rc = events_record(tx, "queue.message.dead_lettered", subject,
                           json_pack("{s:s,s:I,s:s,s:s,s:i}", "queue", c->queue->name, "message_id",
                                     (json_int_t)c->id, "event_id", eid, "last_error", why,
                                     "receive_count", c->receives),
                           NULL);
        if (rc == 0) rc = alarm_update(tx, c->queue->name);
      }
      break;
    }
    }
    if (rc < 0) return rc;
  }
  return ndone ? delete_done(tx, done, ndone) : 0;
}

/* Marks what settle_tx wrote; called after it committed. */
static void settled(batch_t *b) {
  for (int i = 0; i < b->n; i++)
    if (b->items[i].ran || b->items[i].skip) b->items[i].settled = true;
  b->claimed_ms = time_mono_ms();
}

/* Whether any message may be claimable now: a cheap read before a write. */
static int visible_tx(store_tx_t *tx, void *arg) {
  bus_t *bus = arg;
  int64_t now = time_now_ms();
  char excl[1024], sql[1600];
  outage_exclusion(bus, excl, sizeof(excl));
  snprintf(sql, sizeof(sql),
           "SELECT 1 FROM queue_messages WHERE state = 'ready' AND group_key IS NULL "
           "AND visible_at_ms <= ?%s LIMIT 1",
           excl);
  int n = store_exec(tx, NULL, sql, "i", now);
  if (n != 0) return n;
  /* FIFO messages count only as heads of their group (see claim_tx). */
  snprintf(sql, sizeof(sql),
           "SELECT 1 FROM (SELECT MIN(id) AS head FROM queue_messages "
           " WHERE group_key IS NOT NULL AND state != 'dead'%s GROUP BY group_key, queue "
           " HAVING SUM(CASE WHEN state = 'in_flight' THEN 1 ELSE 0 END) = 0) h "
           "JOIN queue_messages m ON m.id = h.head "
           "WHERE m.state = 'ready' AND m.visible_at_ms <= ? LIMIT 1",
           excl);
  return store_exec(tx, NULL, sql, "i", now);
}

static const char *result_name(bus_result_t r) {
  static const char *n[] = {"done", "not_ready", "failed", "failed_permanent"};
  return n[r];
}

static void run_one(app_t *app, claimed_t *c) {
  json_t *ev = c->event;
  bus_msg_t m = {c->id,
                 c->queue->name,
                 ev,
                 json_string_value(json_object_get(ev, "id")),
                 json_string_value(json_object_get(ev, "type")),
                 json_string_value(json_object_get(ev, "subject")),
                 json_object_get(ev, "data"),
                 c->receives,
                 c->created_ms};
  int64_t t0 = time_mono_ms();
  c->outcome = c->queue->handler(app, &m);
  double secs = (double)(time_mono_ms() - t0) / 1000.0;
  char labels[160];
  snprintf(labels, sizeof(labels), "queue=\"%s\",outcome=\"%s\"", c->queue->name,
           result_name(c->outcome.result));
  metrics_counter_add("iotfin_bus_handler_outcomes_total", labels, 1);
  snprintf(labels, sizeof(labels), "queue=\"%s\"", c->queue->name);
  metrics_histogram_observe("iotfin_bus_handler_duration_seconds", labels, secs);
  if (c->outcome.result == BUS_FAILED || c->outcome.result == BUS_FAILED_PERMANENT)
    log_warn("bus", "%s failed on %s (receive %d): %s", c->queue->name, m.event_id, c->receives,
             c->outcome.reason);
}

typedef struct {
  bus_t *bus;
  int slot;
} worker_arg_t;

/* --- partner outages ------------------------------------------------------ */

static bool outage_on(bus_t *bus, int qi) {
  if (qi < 0) return false;
  pthread_mutex_lock(&bus->lock);
  bool on = bus->outage[qi].on;
  pthread_mutex_unlock(&bus->lock);
  return on;
}

/* A message of queue qi found its partner not answering. */
static void outage_enter(bus_t *bus, int qi) {
  if (qi < 0) return;
  pthread_mutex_lock(&bus->lock);
  bool was = bus->outage[qi].on;
  if (!was) {
    bus->outage[qi].on = true;
    bus->outage[qi].since_mono = time_mono_ms();
    bus->outage[qi].next_probe_mono = time_mono_ms() + probe_every_ms(bus->app);
  }
  pthread_mutex_unlock(&bus->lock);
  if (!was)
    log_warn("bus", "%s: partner not answering; probing every %lld ms until it does",
             queues[qi].name, (long long)probe_every_ms(bus->app));
}

/* Picks a queue whose next probe is due and marks it probing; -1 when none. */
static int probe_take(bus_t *bus, int64_t *after) {
  int found = -1;
  int64_t now = time_mono_ms();
  pthread_mutex_lock(&bus->lock);
  for (int i = 0; i < queue_count() && i < MAX_QUEUES && found < 0; i++) {
    if (bus->outage[i].on && !bus->outage[i].probing && now >= bus->outage[i].next_probe_mono) {
      bus->outage[i].probing = true;
      *after = bus->outage[i].last_probe_id;
      found = i;
    }
  }
  pthread_mutex_unlock(&bus->lock);
  return found;
}

/* A probe of queue qi ended. back: the partner answered (or nothing waits any
 * more): the outage ends and every parked message is visible at once. */
static void probe_end(bus_t *bus, int qi, int64_t probed_id, bool back) {
  int64_t now = time_mono_ms(), since = 0;
  pthread_mutex_lock(&bus->lock);
  bus->outage[qi].probing = false;
  if (probed_id) bus->outage[qi].last_probe_id = probed_id;
  bool was = bus->outage[qi].on;
  if (back) {
    bus->outage[qi].on = false;
    since = bus->outage[qi].since_mono;
  } else {
    bus->outage[qi].next_probe_mono = now + probe_every_ms(bus->app);
  }
  pthread_mutex_unlock(&bus->lock);
  if (!back || !was) return;
  release_t r = {queues[qi].name, time_now_ms()};
  int n = store_write(bus->app->store, release_tx, &r);
  log_info("bus", "%s: partner answers again after %lld ms; %d parked message(s) released",
           queues[qi].name, (long long)(now - since), n < 0 ? 0 : n);
  bus_notify(bus);
}

/* --- leases --------------------------------------------------------------- */

/* Writes the renewal of every lease the workers hold (copied into arg). */
typedef struct {
  bus_t *bus;
  int n;
  int64_t id[MAX_WORKERS * CLAIM_BATCH], lease[MAX_WORKERS * CLAIM_BATCH];
} renew_t;

static int renew_tx(store_tx_t *tx, void *arg) {
  renew_t *r = arg;
  int64_t until = time_now_ms() + r->bus->app->cfg->visibility_timeout_ms;
  for (int i = 0; i < r->n; i++) {
    /* Settled messages are no longer in flight under this lease: untouched. */
    int rc = store_exec(tx, NULL,
                        "UPDATE queue_messages SET visible_at_ms = ? WHERE id = ? AND lease = ? "
                        "AND state = 'in_flight'",
                        "iii", until, r->id[i], r->lease[i]);
    if (rc < 0) return rc;
  }
  return 0;
}

/* Renews every third of the visibility timeout the leases of every message the
 * workers hold, the waiting ones of a batch with the running one: a slow handler
 * does not see its message delivered twice, nor its followers taken from it. */
static void *keeper_main(void *arg) {
  bus_t *bus = arg;
  pthread_setname_np(pthread_self(), "bus-keeper");
  int64_t every = bus->app->cfg->visibility_timeout_ms / 3;
  if (every < 20) every = 20;
  renew_t *r = malloc(sizeof(*r));
  if (!r) return NULL;
  r->bus = bus;
  uint64_t gens[MAX_WORKERS];
  int64_t last = time_mono_ms();
  for (;;) {
    int64_t wait = last + every - time_mono_ms();
    if (wait > 0) {
      struct timespec ts;
      time_deadline(wait, &ts);
      pthread_mutex_lock(&bus->lock);
      if (!bus->stopping) pthread_cond_timedwait(&bus->cond, &bus->lock, &ts);
      pthread_mutex_unlock(&bus->lock);
    }
    pthread_mutex_lock(&bus->lock);
    bool stop = bus->stopping;
    pthread_mutex_unlock(&bus->lock);
    if (stop) break;
    if (time_mono_ms() - last < every) continue; /* woken by a commit */
    last = time_mono_ms();
    r->n = 0;
    pthread_mutex_lock(&bus->lock);
    for (int s = 0; s < bus->nthreads; s++) {
      gens[s] = bus->slots[s].gen;
      for (int i = 0; i < bus->slots[s].n; i++) {
        r->id[r->n] = bus->slots[s].id[i];
        r->lease[r->n++] = bus->slots[s].lease[i];
      }
    }
    pthread_mutex_unlock(&bus->lock);
    if (r->n == 0 || store_write(bus->app->store, renew_tx, r) < 0) continue;
    pthread_mutex_lock(&bus->lock);
    for (int s = 0; s < bus->nthreads; s++)
      if (bus->slots[s].gen == gens[s] && bus->slots[s].renewed_mono < last)
        bus->slots[s].renewed_mono = last;
    pthread_mutex_unlock(&bus->lock);
  }
  free(r);
  return NULL;
}

/* Publishes (or, n = 0, withdraws) the leases of a worker's batch for the keeper. */
static void slot_set(bus_t *bus, int slot, const batch_t *b, int n) {
  pthread_mutex_lock(&bus->lock);
  bus->slots[slot].gen++;
  bus->slots[slot].n = n;
  bus->slots[slot].renewed_mono = b->claimed_ms;
  for (int i = 0; i < n; i++) {
    bus->slots[slot].id[i] = b->items[i].id;
    bus->slots[slot].lease[i] = b->items[i].lease;
  }
  pthread_mutex_unlock(&bus->lock);
}

static void slot_renewed(bus_t *bus, int slot, int64_t at) {
  pthread_mutex_lock(&bus->lock);
  if (bus->slots[slot].renewed_mono < at) bus->slots[slot].renewed_mono = at;
  pthread_mutex_unlock(&bus->lock);
}

/* Whether this worker's leases may have run out (the keeper could not renew them
 * for two thirds of the visibility timeout): then another worker may hold its
 * messages, and running more of the batch could deliver a group out of order. */
static bool slot_stale(bus_t *bus, int slot) {
  pthread_mutex_lock(&bus->lock);
  int64_t age = time_mono_ms() - bus->slots[slot].renewed_mono;
  pthread_mutex_unlock(&bus->lock);
  return age >= bus->app->cfg->visibility_timeout_ms * 2 / 3;
}

/* --- the worker ----------------------------------------------------------- */

/* Item i did not end done: every later item of its group goes back with it (in
 * the same settlement), so none is left in flight without its head. */
static void skip_group_after(batch_t *b, int i) {
  for (int j = i + 1; j < b->n; j++)
    if (!b->items[j].ran && b->items[j].queue == b->items[i].queue &&
        strcmp(b->items[j].group, b->items[i].group) == 0)
      b->items[j].skip = true;
}

static void build_events(batch_t *b) {
  for (int i = 0; i < b->n; i++) {
    const store_rows_t *rows = b->items[i].src;
    int r = b->items[i].row;
    json_t *data = json_loads(store_rows_text(rows, r, 11), 0, NULL);
    b->items[i].event =
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o}", "specversion", "1.0", "id",
                  store_rows_text(rows, r, 6), "source", store_rows_text(rows, r, 8), "type",
                  store_rows_text(rows, r, 7), "time", store_rows_text(rows, r, 10), "subject",
                  store_rows_text(rows, r, 9), "datacontenttype", "application/json", "data",
                  data ? data : json_object());
  }
}

/* A settlement with the next claim behind it, in one transaction. */
typedef struct {
  batch_t *done, *next;
  int claimed;
} settle_claim_t;

static int settle_claim_tx(store_tx_t *tx, void *arg) {
  settle_claim_t *sc = arg;
  int rc = settle_tx(tx, sc->done);
  if (rc < 0) return rc;
  sc->claimed = claim_tx(tx, sc->next);
  return sc->claimed < 0 ? sc->claimed : 0;
}

/* Whether the worker, done with a batch, would claim the next one at once: nothing is
 * stopping, no queue waits for a probe, and something looks claimable (a read). */
static bool claim_next_now(bus_t *bus) {
  pthread_mutex_lock(&bus->lock);
  bool quiet = !bus->stopping;
  for (int i = 0; quiet && i < queue_count() && i < MAX_QUEUES; i++)
    quiet = !bus->outage[i].on;
  pthread_mutex_unlock(&bus->lock);
  return quiet && store_read(bus->app->store, visible_tx, bus) > 0;
}

/* Runs the claimed batch b in order and settles it. When more work waits, the settlement also
 * claims the next batch into next, in the same transaction: one commit, and one wait for it,
 * between two batches instead of two. Returns how many it claimed into next. */
static int run_batch(bus_t *bus, int slot, batch_t *b, batch_t *next) {
  build_events(b);
  free_rows(b);
  slot_set(bus, slot, b, b->n);
  int64_t vt = bus->app->cfg->visibility_timeout_ms;
  bool probe_open = b->probe_q >= 0;
  for (int i = 0; i < b->n; i++) {
    claimed_t *c = &b->items[i];
    int qi = queue_index(c->queue);
    bool probe = probe_open && i == 0;
    if (c->skip) {
      /* given back with an earlier one of its group */
    } else if (slot_stale(bus, slot)) {
      log_warn("bus", "a batch lost its leases; %d message(s) go back unrun", b->n - i);
      for (int j = i; j < b->n; j++)
        if (!b->items[j].ran) b->items[j].skip = true;
    } else if (!probe && outage_on(bus, qi)) {
      c->skip = true; /* its partner is down: the probe goes first */
    } else {
      run_one(bus->app, c);
      c->ran = true;
      if (probe) {
        probe_end(bus, b->probe_q, c->id, !c->outcome.unavailable);
        probe_open = false;
      } else if (c->outcome.unavailable) {
        outage_enter(bus, qi);
      }
      if (c->group[0] && c->outcome.result != BUS_DONE) skip_group_after(b, i);
    }
    /* A slow batch settles what it has done early, so that a crash repeats less. */
    if (i + 1 < b->n && time_mono_ms() - b->claimed_ms >= vt / 4) {
      int64_t t0 = time_mono_ms();
      if (store_write(bus->app->store, settle_tx, b) == 0) {
        settled(b);
        slot_renewed(bus, slot, t0);
      }
    }
  }
  if (probe_open) probe_end(bus, b->probe_q, b->items[0].id, false);
  int rc = -1, claimed = 0;
  if (claim_next_now(bus)) {
    next->probe_q = -1;
    settle_claim_t sc = {b, next, 0};
    rc = store_write(bus->app->store, settle_claim_tx, &sc);
    if (rc == 0) claimed = sc.claimed;
    if (claimed <= 0) {
      /* Nothing claimed, or neither happened: what the claim read is not this worker's. */
      free_rows(next);
      next->n = 0;
    }
  }
  if (rc < 0) rc = store_write(bus->app->store, settle_tx, b);
  if (rc < 0)
    log_error("bus", "could not settle %d message(s); they reappear after the visibility timeout",
              b->n);
  slot_set(bus, slot, b, 0);
  for (int i = 0; i < b->n; i++)
    json_decref(b->items[i].event);
  b->n = 0;
  return claimed;
}

static void *worker_main(void *arg) {
  worker_arg_t *wa = arg;
  bus_t *bus = wa->bus;
  int slot = wa->slot;
  free(wa);
  pthread_setname_np(pthread_self(), "bus-worker");
  /* Two batches: the one running, and the one its settlement may claim. */
  batch_t *bufs = calloc(2, sizeof(*bufs));
  if (!bufs) return NULL;
  batch_t *b = &bufs[0], *spare = &bufs[1];
  for (int i = 0; i < 2; i++) {
    bufs[i].app = bus->app;
    bufs[i].bus = bus;
  }
  for (;;) {
    pthread_mutex_lock(&bus->lock);
    bool stop = bus->stopping;
    uint64_t seen = bus->wake_seq;
    pthread_mutex_unlock(&bus->lock);
    if (stop) break;

    int n;
    b->probe_q = probe_take(bus, &b->probe_after);
    if (b->probe_q >= 0) {
      n = store_write(bus->app->store, probe_claim_tx, b);
      /* Nothing to probe with: if nothing waits either, the outage is over. */
      if (n <= 0) probe_end(bus, b->probe_q, 0, n == 0 && b->waiting == 0);
    } else {
      int64_t now = time_now_ms();
      bool sweep_due = now - atomic_load(&last_reclaim_ms) >= RECLAIM_EVERY_MS;
      n = (sweep_due || store_read(bus->app->store, visible_tx, bus) > 0)
              ? store_write(bus->app->store, claim_tx, b)
              : 0;
    }
    if (n > 0) {
      /* Back to back while each settlement claimed the next batch. */
      while (n > 0) {
        n = run_batch(bus, slot, b, spare);
        batch_t *t = b;
        b = spare;
        spare = t;
      }
      continue;
    }
    free_rows(b); /* a claim that found nothing, or whose commit failed */
    b->n = 0;
    /* Found nothing although something looked visible (a race with another worker):
     * a short pause keeps commits that wake everyone from turning into a spin. */
    if (n == 0) usleep(2000);
    if (n < 0) log_error("bus", "claiming messages failed; retrying");
    /* Nothing visible: sleep until a commit wakes us or a delay may have passed. */
    struct timespec ts;
    time_deadline(atomic_load(&idle_wait_ms), &ts);
    pthread_mutex_lock(&bus->lock);
    while (!bus->stopping && bus->wake_seq == seen)
      if (pthread_cond_timedwait(&bus->cond, &bus->lock, &ts) != 0) break;
    pthread_mutex_unlock(&bus->lock);
  }
  free_rows(b);
  free_rows(spare);
  free(bufs);
  return NULL;
}

void bus_notify(bus_t *bus) {
  pthread_mutex_lock(&bus->lock);
  bus->wake_seq++;
  pthread_cond_broadcast(&bus->cond);
  pthread_mutex_unlock(&bus->lock);
}

static void on_commit(void *arg) {
  uint64_t f = atomic_load(&fanned_out);
  if (f == fanned_seen) return;
  fanned_seen = f;
  bus_notify(arg);
}

static int reclaim_tx(store_tx_t *tx, void *arg) {
  /* claimed_by NULL: leased before leases named their instance (one instance then). */
  return store_exec(tx, NULL,
                    "UPDATE queue_messages SET state = 'ready', visible_at_ms = ? "
                    "WHERE state = 'in_flight' AND (claimed_by = ? OR claimed_by IS NULL)",
                    "is", time_now_ms(), (const char *)arg);
}

/* Another instance fanned out (or the listener came back and may have missed it). */
static void on_note(const char *topic, const char *payload, bool self, void *arg) {
  (void)payload;
  if (!self && (strcmp(topic, "queue") == 0 || strcmp(topic, "resync") == 0)) bus_notify(arg);
}

static void collect(void *arg);

int bus_start(app_t *app, int nworkers, bus_t **out) {
  *out = NULL;
  bus_t *bus = calloc(1, sizeof(*bus));
  if (!bus) return -ERR_INTERNAL;
  bus->app = app;
  pthread_mutex_init(&bus->lock, NULL);
  pthread_cond_init(&bus->cond, NULL);
  metrics_describe("iotfin_bus_handler_outcomes_total", "counter",
                   "Handler outcomes by queue (done, not_ready, failed, failed_permanent).");
  metrics_describe("iotfin_bus_handler_duration_seconds", "histogram",
                   "Handler run time by queue.");
  metrics_describe("iotfin_queue_messages", "gauge", "Messages by queue and state.");
  metrics_describe("iotfin_queue_dead_letters", "gauge", "Dead letters by queue.");
  metrics_add_collector(collect, app);
  /* Whatever this instance had in flight died with its last run: hand it out again
   * now. Other instances' leases are theirs until their visibility timeout. */
  {
    int n = store_write(app->store, reclaim_tx, app->instance_id);
    if (n > 0) log_info("bus", "%d message(s) in flight at the last stop are ready again", n);
  }
  if (store_add_commit_hook(app->store, on_commit, bus) < 0) log_warn("bus", "no commit hook left");
  store_listen(app->store, on_note, bus);
  if (nworkers > MAX_WORKERS) nworkers = MAX_WORKERS;
  for (int i = 0; i < nworkers; i++) {
    worker_arg_t *wa = malloc(sizeof(*wa));
    if (!wa) break;
    *wa = (worker_arg_t){bus, i};
    if (pthread_create(&bus->threads[i], NULL, worker_main, wa) != 0) {
      free(wa);
      break;
    }
    bus->nthreads++;
  }
  pthread_create(&bus->keeper, NULL, keeper_main, bus);
  *out = bus;
  return bus->nthreads > 0 ? 0 : -ERR_INTERNAL;
}

void bus_stop(bus_t **pbus, int timeout_ms) {
  bus_t *bus = *pbus;
  if (!bus) return;
  (void)timeout_ms; /* workers finish their current batch; handlers have own timeouts */
  pthread_mutex_lock(&bus->lock);
  bus->stopping = true;
  pthread_cond_broadcast(&bus->cond);
  pthread_mutex_unlock(&bus->lock);
  for (int i = 0; i < bus->nthreads; i++)
    pthread_join(bus->threads[i], NULL);
  pthread_join(bus->keeper, NULL);
  store_remove_commit_hook(bus->app->store, on_commit, bus);
  store_unlisten(bus->app->store, on_note, bus);
  pthread_mutex_destroy(&bus->lock);
  pthread_cond_destroy(&bus->cond);
  free(bus);
  *pbus = NULL;
}

/* --- operations ----------------------------------------------------------- */

static int stats_tx(store_tx_t *tx, void *arg) {
  json_t *items = arg;
  int64_t now = time_now_ms();
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT queue, "
                     "SUM(CASE WHEN state = 'ready' AND visible_at_ms <= ? THEN 1 ELSE 0 END), "
                     "SUM(CASE WHEN state = 'in_flight' THEN 1 ELSE 0 END), "
                     "SUM(CASE WHEN (state = 'ready' AND visible_at_ms > ?) OR state = 'parked' "
                     "THEN 1 ELSE 0 END), "
                     "SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), "
                     "MIN(CASE WHEN state != 'dead' THEN created_at_ms END) "
                     "FROM queue_messages GROUP BY queue",
                     "ii", now, now);
  if (n < 0) return n;
  for (int q = 0; q < queue_count(); q++) {
    int64_t ready = 0, in_flight = 0, delayed = 0, dead = 0, oldest = 0;
    for (int i = 0; i < n; i++) {
      if (strcmp(store_rows_text(rows, i, 0), queues[q].name) != 0) continue;
      ready = store_rows_int(rows, i, 1);
      in_flight = store_rows_int(rows, i, 2);
      delayed = store_rows_int(rows, i, 3);
      dead = store_rows_int(rows, i, 4);
      if (!store_rows_is_null(rows, i, 5)) oldest = now - store_rows_int(rows, i, 5);
    }
    json_array_append_new(items,
                          json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "name", queues[q].name, "ready",
                                    (json_int_t)ready, "in_flight", (json_int_t)in_flight,
                                    "delayed", (json_int_t)delayed, "dead", (json_int_t)dead,
                                    "oldest_age_ms", (json_int_t)oldest));
  }
  store_rows_free(&rows);
  return 0;
}

int bus_queue_stats(app_t *app, json_t **out) {
  json_t *items = json_array();
  int rc = store_read(app->store, stats_tx, items);
  if (rc < 0) {
    json_decref(items);
    return rc;
  }
  *out = items;
  return 0;
}

static void collect(void *arg) {
  app_t *app = arg;
  json_t *items;
  if (!app->store || bus_queue_stats(app, &items) < 0) return;
  size_t i;
  json_t *q;
  json_array_foreach(items, i, q) {
    const char *name = json_string_value(json_object_get(q, "name"));
    const char *states[] = {"ready", "in_flight", "delayed"};
    char labels[160];
    for (int s = 0; s < 3; s++) {
      snprintf(labels, sizeof(labels), "queue=\"%s\",state=\"%s\"", name, states[s]);
      metrics_gauge_set("iotfin_queue_messages", labels,
                        (double)json_integer_value(json_object_get(q, states[s])));
    }
    snprintf(labels, sizeof(labels), "queue=\"%s\"", name);
    metrics_gauge_set("iotfin_queue_dead_letters", labels,
                      (double)json_integer_value(json_object_get(q, "dead")));
  }
  json_decref(items);
}

typedef struct {
  const char *queue;
  int64_t after;
  int limit;
  json_t *items;
  int64_t next;
} dl_ctx_t;

static int dead_tx(store_tx_t *tx, void *arg) {
  dl_ctx_t *c = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT m.id, m.receive_count, m.last_error, m.dead_at, "
                     "e.seq, e.id, e.type, e.source, e.subject, e.time, e.data "
                     "FROM queue_messages m JOIN events e ON e.seq = m.event_seq "
                     "WHERE m.queue = ? AND m.state = 'dead' AND m.id > ? ORDER BY m.id LIMIT ?",
                     "sii", c->queue, c->after, (int64_t)c->limit + 1);
  if (n < 0) return n;
  c->next = 0;
  for (int i = 0; i < n && i < c->limit; i++) {
    json_t *data = json_loads(store_rows_text(rows, i, 10), 0, NULL);
    json_t *ev = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o}", "specversion", "1.0", "id",
                           store_rows_text(rows, i, 5), "source", store_rows_text(rows, i, 7),
                           "type", store_rows_text(rows, i, 6), "time", store_rows_text(rows, i, 9),
                           "subject", store_rows_text(rows, i, 8), "datacontenttype",
                           "application/json", "data", data ? data : json_object());
    char id[32];
    snprintf(id, sizeof(id), "%s", store_rows_text(rows, i, 0));
    json_array_append_new(
        c->items, json_pack("{s:s,s:o,s:I,s:s?,s:s?}", "id", id, "event", ev, "receive_count",
                            (json_int_t)store_rows_int(rows, i, 1), "last_error",
                            store_rows_text(rows, i, 2), "dead_at", store_rows_text(rows, i, 3)));
    if (i == c->limit - 1 && n > c->limit) c->next = store_rows_int(rows, i, 0);
  }
  store_rows_free(&rows);
  return 0;
}

int bus_dead_letters(app_t *app, const char *queue, int64_t after_id, int limit, json_t **out,
                     int64_t *next) {
  dl_ctx_t c = {queue, after_id, limit, json_array(), 0};
  int rc = store_read(app->store, dead_tx, &c);
  if (rc < 0) {
    json_decref(c.items);
    return rc;
  }
  *out = c.items;
  *next = c.next;
  return 0;
}

typedef struct {
  const char *queue;
  json_t *ids;
  int redriven;
} redrive_ctx_t;

static int redrive_tx(store_tx_t *tx, void *arg) {
  redrive_ctx_t *c = arg;
  int64_t now = time_now_ms();
  const char *sql = "UPDATE queue_messages SET state = 'ready', receive_count = 0, "
                    "visible_at_ms = ?, dead_at = NULL WHERE queue = ? AND state = 'dead'";
  c->redriven = 0;
  if (!c->ids) {
    int rc = store_exec(tx, NULL, sql, "is", now, c->queue);
    if (rc < 0) return rc;
    c->redriven = rc;
  } else {
    char one[300];
    snprintf(one, sizeof(one), "%s AND id = ?", sql);
    size_t i;
    json_t *v;
    json_array_foreach(c->ids, i, v) {
      const char *s = json_string_value(v);
      int64_t id = s ? strtoll(s, NULL, 10) : json_integer_value(v);
      int rc = store_exec(tx, NULL, one, "isi", now, c->queue, id);
      if (rc < 0) return rc;
      c->redriven += rc;
    }
  }
  /* Redriven messages are ready now: their workers need not wait for an idle poll. */
  int rc = c->redriven > 0 ? wake_on_commit(tx) : 0;
  return rc < 0 ? rc : alarm_update(tx, c->queue);
}

int bus_redrive(app_t *app, const char *queue, json_t *ids, int *redriven) {
  redrive_ctx_t c = {queue, ids, 0};
  int rc = store_write(app->store, redrive_tx, &c);
  *redriven = c.redriven;
  if (rc >= 0 && c.redriven)
    log_info("bus", "redrove %d message(s) on %s with a fresh receive count", c.redriven, queue);
  return rc < 0 ? rc : 0;
}

static int alarms_tx(store_tx_t *tx, void *arg) {
  json_t *items = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT name, state, queue, count, raised_at FROM alarms ORDER BY name", "");
  for (int i = 0; i < n; i++)
    json_array_append_new(
        items, json_pack("{s:s,s:s,s:s,s:I,s:s?}", "name", store_rows_text(rows, i, 0), "state",
                         store_rows_text(rows, i, 1), "queue", store_rows_text(rows, i, 2), "count",
                         (json_int_t)store_rows_int(rows, i, 3), "raised_at",
                         store_rows_text(rows, i, 4)));
  store_rows_free(&rows);
  return n < 0 ? n : 0;
}

int bus_alarms(app_t *app, json_t **out) {
  json_t *items = json_array();
  int rc = store_read(app->store, alarms_tx, items);
  if (rc < 0) {
    json_decref(items);
    return rc;
  }
  *out = items;
  return 0;
}
