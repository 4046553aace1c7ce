/* GET /v1/events/stream: Server-Sent Events about the caller's devices, and
 * GET /console/api/stream: every event (optionally filtered by type and subject) for the
 * operator console, while its console session lasts.
 *
 * One "sse-notify" thread reads the event log every 100 ms, once for all streams:
 * each new device event is formatted once and appended to the pending output of every
 * stream of the device's owner, which is then resumed. A stream only queries the log
 * itself to catch up after Last-Event-ID, until it meets the notifier. The notifier
 * also ends streams whose session was revoked (it sees session.revoked in the log) or
 * whose token expired, and writes the heartbeats. A user keeps at most
 * IOTFIN_STREAMS_PER_USER streams (a new one closes that user's oldest: a client that
 * reconnects must not be locked out by its own dead connection); past
 * IOTFIN_STREAMS_MAX in all, a new one gets 503 with Retry-After.
 * streams_lock guards the registry, notified_seq and every field of a stream the
 * notifier touches (last_seq, pending, suspended, closing, catching_up). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "app.h"
#include "core/errors.h"
#include "core/jsontext.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "services/console.h"
#include "services/console_sessions.h"
#include "services/events.h"
#include "services/sessions.h"

#define HEARTBEAT_MS 15000
/* The notifier looks when a commit recorded events (the commit hook here, a NOTIFY
 * from another instance), at most every MIN_ROUND_MS so that a busy log is read in
 * pages rather than row by row, and at least every WAKE_MS (expiry, heartbeats). */
#define WAKE_MS 100
#define MIN_ROUND_MS 5
#define BATCH 50
#define NOTIFY_PAGE 500
#define NOTIFY_PAGES_PER_WAKE 20
/* Output a stream may have waiting for its client; past it the client is too slow and
 * the stream ends (it resumes with Last-Event-ID). */
#define PENDING_MAX (1024 * 1024)

typedef struct stream {
  app_t *app;
  void *conn;
  auth_claims_t claims;
  int64_t opened_ms;
  int64_t last_seq; /* the newest event queued for this stream */
  char *pending;
  size_t pending_len, pending_off;
  int64_t last_write_ms;
  bool suspended, closing, catching_up;
  /* A console stream: every event (no user), filtered by type (exact, or a prefix when
   * it ends in '*'; type_like is the same as a LIKE pattern for the catch-up query) and
   * by subject ("" = any), while console_sid stays signed in. */
  bool all;
  char type[200], type_like[400], subject[200];
  char console_sid[CONSOLE_SECRET_LEN + 1];
  struct stream *next;
} stream_t;

static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static stream_t *streams;
static long streams_count, console_count; /* console_count: streams with all set */
static int64_t notified_seq;              /* the notifier has fanned out every event up to here */
static pthread_t notifier;
static atomic_bool notifier_running, notifier_stop;
/* poke_lock guards poked; poke_cond wakes the notifier early. */
static pthread_mutex_t poke_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t poke_cond = PTHREAD_COND_INITIALIZER;
static bool poked;
static _Atomic uint64_t events_seen; /* events_recorded() at the last commit hook */
static app_t *notifier_app;

static void poke(void) {
  pthread_mutex_lock(&poke_lock);
  poked = true;
  pthread_cond_signal(&poke_cond);
  pthread_mutex_unlock(&poke_lock);
}

/* Writer thread, after each commit: quick, and only when events were recorded. */
static void on_commit(void *arg) {
  (void)arg;
  uint64_t n = events_recorded();
  if (atomic_exchange(&events_seen, n) != n) poke();
}

static void on_note(const char *topic, const char *payload, bool self, void *arg) {
  (void)payload;
  (void)arg;
  if (!self && (strcmp(topic, "events") == 0 || strcmp(topic, "resync") == 0)) poke();
}

/* Waits for a poke or WAKE_MS, whichever comes first; then lets MIN_ROUND_MS pass
 * since the last round. */
static void wait_for_work(int64_t last_round_ms) {
  struct timespec ts;
  time_deadline(WAKE_MS, &ts);
  pthread_mutex_lock(&poke_lock);
  while (!poked && !atomic_load(&notifier_stop))
    if (pthread_cond_timedwait(&poke_cond, &poke_lock, &ts) != 0) break;
  poked = false;
  pthread_mutex_unlock(&poke_lock);
  int64_t since = time_mono_ms() - last_round_ms;
  if (since < MIN_ROUND_MS) usleep((useconds_t)(MIN_ROUND_MS - since) * 1000);
}

/* Caller must hold streams_lock. false (and the stream closing) when out of room. */
static bool append(stream_t *s, const char *text, size_t add) {
  if (s->pending_len - s->pending_off + add > PENDING_MAX) {
    if (!s->closing)
      log_warn("api", "closing an event stream of user %s: its client reads too slowly",
               s->claims.sub);
    s->closing = true;
    return false;
  }
  char *p = realloc(s->pending, s->pending_len + add + 1);
  if (!p) return false;
  memcpy(p + s->pending_len, text, add);
  p[s->pending_len + add] = 0;
  s->pending = p;
  s->pending_len += add;
  return true;
}

/* Caller must hold streams_lock. */
static void wake(stream_t *s) {
  if (!s->suspended) return;
  s->suspended = false;
  http_conn_resume(s->conn);
}

/* One event as an SSE frame (malloc'd), or NULL. Console frames leave out `event:` so
 * that a browser's EventSource hands every event to one onmessage: the type is in the
 * data. */
static char *frame_of(json_t *ev, bool with_type, size_t *len) {
  char *data = json_text(ev, NULL);
  if (!data) return NULL;
  size_t cap = strlen(data) + 512;
  char *frame = malloc(cap);
  if (frame) {
    int n = with_type ? snprintf(frame, cap, "id: %s\nevent: %s\ndata: %s\n\n",
                                 json_string_value(json_object_get(ev, "id")),
                                 json_string_value(json_object_get(ev, "type")), data)
                      : snprintf(frame, cap, "id: %s\ndata: %s\n\n",
                                 json_string_value(json_object_get(ev, "id")), data);
    *len = n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
  }
  free(data);
  return frame;
}

/* A stream lives while its token has not expired and its session is not revoked; a
 * console stream while its console session lasts (sign-out or expiry end it). */
static bool alive(stream_t *s) {
  if (s->all)
    return console_sessions_check(s->app->store, s->console_sid, time_now_ms(), NULL, NULL) >= 0;
  if (time_now_ms() / 1000 >= s->claims.exp) return false;
  return sessions_check(s->app, &s->claims) == 0;
}

/* --- catching up after Last-Event-ID ---------------------------------------------- */

typedef struct {
  stream_t *s;
  int64_t after, upto;
  json_t *items;
  int64_t max_seq;
} fetch_t;

static int fetch_tx(store_tx_t *tx, void *arg) {
  fetch_t *f = arg;
  store_rows_t *rows = NULL;
  stream_t *s = f->s;
  const char *type = s->type_like[0] ? s->type_like : NULL;
  const char *subject = s->subject[0] ? s->subject : NULL;
  int n =
      s->all
          ? store_exec(tx, &rows,
                       "SELECT " EVENTS_COLUMNS " FROM events WHERE seq > ? AND seq <= ? "
                       "AND (? IS NULL OR type LIKE ? ESCAPE '\\') AND (? IS NULL OR "
                       "subject = ?) ORDER BY seq LIMIT ?",
                       "iissssi", f->after, f->upto, type, type, subject, subject, (int64_t)BATCH)
          : store_exec(tx, &rows,
                       "SELECT " EVENTS_COLUMNS " FROM events WHERE seq > ? AND seq <= ? AND "
                       "subject IN (SELECT 'devices/' || id FROM devices WHERE owner_id = ?) "
                       "ORDER BY seq LIMIT ?",
                       "iisi", f->after, f->upto, f->s->claims.sub, (int64_t)BATCH);
  if (n < 0) return n;
  f->items = json_array();
  for (int i = 0; i < n; i++) {
    json_array_append_new(f->items, events_row_to_json(rows, i));
    f->max_seq = store_rows_int(rows, i, 0);
  }
  store_rows_free(&rows);
  return 0;
}

/* Reads this stream's own backlog up to what the notifier has fanned out; once it
 * meets the notifier, the notifier feeds it. Runs on the stream's request thread. */
static void catch_up(stream_t *s) {
  for (;;) {
    pthread_mutex_lock(&streams_lock);
    int64_t after = s->last_seq, upto = notified_seq;
    pthread_mutex_unlock(&streams_lock);
    fetch_t f = {s, after, upto, NULL, after};
    if (store_read(s->app->store, fetch_tx, &f) < 0) {
      json_decref(f.items);
      return; /* storage trouble: try again on the next call */
    }
    pthread_mutex_lock(&streams_lock);
    size_t i;
    json_t *ev;
    json_array_foreach(f.items, i, ev) {
      size_t len = 0;
      char *frame = frame_of(ev, !s->all, &len);
      if (frame) append(s, frame, len);
      free(frame);
    }
    bool all = json_array_size(f.items) < BATCH; /* everything up to upto is read */
    s->last_seq = all ? upto : f.max_seq;
    bool done = all && notified_seq == upto;
    if (done) s->catching_up = false;
    bool have = s->pending_len > s->pending_off;
    pthread_mutex_unlock(&streams_lock);
    json_decref(f.items);
    if (done || have) return;
  }
}

/* --- the stream's request side ----------------------------------------------------- */

static long stream_fill(void *cls, char *buf, size_t max) {
  stream_t *s = cls;
  /* Checked on every delivery and heartbeat: a logged-out or expired token's stream
   * ends even between two notifier rounds. */
  if (!alive(s)) return -1;
  if (s->catching_up) catch_up(s);
  pthread_mutex_lock(&streams_lock);
  if (s->closing) {
    pthread_mutex_unlock(&streams_lock);
    return -1;
  }
  if (s->pending_len > s->pending_off) {
    size_t n = s->pending_len - s->pending_off;
    if (n > max) n = max;
    memcpy(buf, s->pending + s->pending_off, n);
    s->pending_off += n;
    if (s->pending_off == s->pending_len) {
      free(s->pending);
      s->pending = NULL;
      s->pending_len = s->pending_off = 0;
    }
    s->last_write_ms = time_mono_ms();
    pthread_mutex_unlock(&streams_lock);
    return (long)n;
  }
  /* Nothing to send (or storage failed mid catch-up: the notifier's next round wakes
   * a catching-up stream to retry). */
  s->suspended = true;
  http_conn_suspend(s->conn);
  pthread_mutex_unlock(&streams_lock);
  return 0;
}

static void stream_free(void *cls) {
  stream_t *s = cls;
  pthread_mutex_lock(&streams_lock);
  for (stream_t **pp = &streams; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      streams_count--;
      if (s->all) console_count--;
      break;
    }
  pthread_mutex_unlock(&streams_lock);
  free(s->pending);
  free(s);
}

/* --- the notifier -------------------------------------------------------------------- */

static int max_seq_tx(store_tx_t *tx, void *arg) {
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT COALESCE(MAX(seq), 0) FROM events", "");
  if (n > 0) *(int64_t *)arg = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  return n < 0 ? n : 0;
}

#define OWNER_COL 7 /* after the EVENTS_COLUMNS */

typedef struct {
  int64_t after, upto;
  bool every; /* console streams are open: every event, not only devices' */
  store_rows_t *rows;
  int n;
} page_t;

/* New device events (with their device's owner) and session revocations, in order. */
static int page_tx(store_tx_t *tx, void *arg) {
  page_t *p = arg;
  p->n = store_exec(tx, &p->rows,
                    "SELECT " EVENTS_COLUMNS ", (SELECT owner_id FROM devices WHERE devices.id = "
                    "substr(events.subject, 9)) FROM events WHERE seq > ? AND seq <= ? AND "
                    "(? <> 0 OR subject LIKE 'devices/%' OR type = 'session.revoked') "
                    "ORDER BY seq LIMIT ?",
                    "iiii", p->after, p->upto, (int64_t)p->every, (int64_t)NOTIFY_PAGE);
  return p->n < 0 ? p->n : 0;
}

static bool console_match(const stream_t *s, const char *type, const char *subject) {
  size_t tl = strlen(s->type);
  if (tl && s->type[tl - 1] == '*' ? strncmp(type, s->type, tl - 1) != 0
                                   : tl && strcmp(type, s->type) != 0)
    return false;
  return !s->subject[0] || strcmp(subject, s->subject) == 0;
}

/* Caller must hold streams_lock. Row i to the console streams whose filters it passes. */
static void fan_out_console(store_rows_t *rows, int i) {
  int64_t seq = store_rows_int(rows, i, 0);
  const char *type = store_rows_text(rows, i, 2), *subject = store_rows_text(rows, i, 4);
  char *frame = NULL;
  size_t len = 0;
  for (stream_t *s = streams; s && type && subject; s = s->next) {
    if (!s->all || s->catching_up || s->closing || seq <= s->last_seq) continue;
    s->last_seq = seq;
    if (!console_match(s, type, subject)) continue;
    if (!frame) {
      json_t *ev = events_row_to_json(rows, i);
      frame = frame_of(ev, false, &len);
      json_decref(ev);
      if (!frame) return;
    }
    append(s, frame, len);
  }
  free(frame);
}

/* Caller must hold streams_lock. Fans row i out to its owner's streams. */
static void fan_out(store_rows_t *rows, int i) {
  int64_t seq = store_rows_int(rows, i, 0);
  const char *type = store_rows_text(rows, i, 2);
  if (console_count) fan_out_console(rows, i);
  if (type && strcmp(type, "session.revoked") == 0) {
    json_t *ev = events_row_to_json(rows, i);
    const char *sid = json_string_value(json_object_get(json_object_get(ev, "data"), "session_id"));
    for (stream_t *s = streams; sid && s; s = s->next)
      if (strcmp(s->claims.sid, sid) == 0) s->closing = true;
    json_decref(ev);
    return;
  }
  const char *owner = store_rows_text(rows, i, OWNER_COL);
  if (!owner) return;
  char *frame = NULL;
  size_t len = 0;
  for (stream_t *s = streams; s; s = s->next) {
    if (s->all || s->catching_up || s->closing || seq <= s->last_seq ||
        strcmp(s->claims.sub, owner) != 0)
      continue;
    if (!frame) {
      json_t *ev = events_row_to_json(rows, i);
      frame = frame_of(ev, true, &len);
      json_decref(ev);
      if (!frame) return;
    }
    append(s, frame, len);
    s->last_seq = seq;
  }
  free(frame);
}

static void notify_round(app_t *app) {
  int64_t top = 0;
  if (store_read(app->store, max_seq_tx, &top) < 0) return;
  pthread_mutex_lock(&streams_lock);
  int64_t seen = notified_seq;
  bool every = console_count > 0;
  pthread_mutex_unlock(&streams_lock);
  for (int pages = 0; seen < top && pages < NOTIFY_PAGES_PER_WAKE; pages++) {
    page_t p = {seen, top, every, NULL, 0};
    if (store_read(app->store, page_tx, &p) < 0) {
      store_rows_free(&p.rows);
      return;
    }
    int64_t upto = p.n < NOTIFY_PAGE ? top : store_rows_int(p.rows, p.n - 1, 0);
    pthread_mutex_lock(&streams_lock);
    for (int i = 0; i < p.n; i++)
      fan_out(p.rows, i);
    notified_seq = upto;
    pthread_mutex_unlock(&streams_lock);
    store_rows_free(&p.rows);
    seen = upto;
  }
}

static void *notifier_main(void *arg) {
  app_t *app = arg;
  pthread_setname_np(pthread_self(), "sse-notify");
  int64_t last_round = 0;
  while (!atomic_load(&notifier_stop)) {
    wait_for_work(last_round);
    if (atomic_load(&notifier_stop)) break;
    last_round = time_mono_ms();
    notify_round(app);
    int64_t now = time_mono_ms(), now_s = time_now_ms() / 1000;
    pthread_mutex_lock(&streams_lock);
    for (stream_t *s = streams; s; s = s->next) {
      if (s->all ? console_sessions_check(app->store, s->console_sid, now_s * 1000, NULL, NULL) ==
                       -ERR_UNAUTHENTICATED
                 : now_s >= s->claims.exp)
        s->closing = true;
      if (!s->closing && s->pending_len == s->pending_off && now - s->last_write_ms >= HEARTBEAT_MS)
        append(s, ": heartbeat\n\n", 13);
      if (s->closing || s->pending_len > s->pending_off || s->catching_up) wake(s);
    }
    pthread_mutex_unlock(&streams_lock);
  }
  return NULL;
}

/* Starts the notifier once, from the log's current end. */
static int notifier_ensure(app_t *app) {
  int rc = 0;
  pthread_mutex_lock(&start_lock);
  if (!atomic_load(&notifier_running)) {
    int64_t top = 0;
    rc = store_read(app->store, max_seq_tx, &top);
    if (rc >= 0) {
      pthread_mutex_lock(&streams_lock);
      notified_seq = top;
      pthread_mutex_unlock(&streams_lock);
      atomic_store(&notifier_stop, false);
      rc = pthread_create(&notifier, NULL, notifier_main, app) == 0 ? 0 : -ERR_INTERNAL;
      if (rc == 0) {
        atomic_store(&notifier_running, true);
        notifier_app = app;
        store_add_commit_hook(app->store, on_commit, NULL);
        store_listen(app->store, on_note, NULL);
      }
    }
  }
  pthread_mutex_unlock(&start_lock);
  return rc < 0 ? rc : 0;
}

typedef struct {
  const char *id;
  int64_t seq;
} seq_q_t;

/* Streams of one user, or of one console session, share the per-user bound. */
static bool same_owner(const stream_t *a, const stream_t *b) {
  return a->all == b->all && (a->all ? strcmp(a->console_sid, b->console_sid) == 0
                                     : strcmp(a->claims.sub, b->claims.sub) == 0);
}

static int seq_of_tx(store_tx_t *tx, void *arg) {
  seq_q_t *q = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT seq FROM events WHERE id = ?", "s", q->id);
  if (n > 0) q->seq = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  return n;
}

/* Opens s (its user or console fields set; freed here on failure) on req. */
static int stream_open(http_req_t *req, stream_t *s) {
  app_t *app = http_req_app(req);
  int rc = notifier_ensure(app);
  if (rc < 0) {
    free(s);
    return rc;
  }
  const char *last = http_req_header(req, "Last-Event-ID");
  seq_q_t q = {last, -1};
  bool resume = last && store_read(app->store, seq_of_tx, &q) > 0;
  s->app = app;
  s->conn = http_req_connection(req);
  s->opened_ms = s->last_write_ms = time_mono_ms();

  pthread_mutex_lock(&streams_lock);
  if (streams_count >= app->cfg->streams_max) {
    pthread_mutex_unlock(&streams_lock);
    free(s);
    http_reply_header(req, "Retry-After", "5");
    return http_reply_problem(req, ERR_UNAVAILABLE, "too many event streams are open", NULL);
  }
  /* The user's oldest open streams make room (a client reconnecting must win over
   * its own connection that has not been noticed gone yet). */
  long mine = 0;
  for (stream_t *o = streams; o; o = o->next)
    if (!o->closing && same_owner(o, s)) mine++;
  while (mine >= app->cfg->streams_per_user) {
    stream_t *oldest = NULL;
    for (stream_t *o = streams; o; o = o->next)
      if (!o->closing && same_owner(o, s) && (!oldest || o->opened_ms <= oldest->opened_ms))
        oldest = o;
    if (!oldest) break;
    oldest->closing = true;
    wake(oldest);
    mine--;
  }
  if (resume && q.seq < notified_seq) {
    s->last_seq = q.seq;
    s->catching_up = true;
  } else {
    s->last_seq = resume && q.seq > notified_seq ? q.seq : notified_seq; /* new events only */
  }
  append(s, ": stream open\nretry: 2000\n\n", 26);
  s->next = streams;
  streams = s;
  streams_count++;
  if (s->all) console_count++;
  pthread_mutex_unlock(&streams_lock);
  return http_reply_stream(req, "text/event-stream", stream_fill, stream_free, s);
}

int api_stream_events(http_req_t *req) {
  stream_t *s = calloc(1, sizeof(*s));
  if (!s) return -ERR_INTERNAL;
  s->claims = *http_req_claims(req);
  return stream_open(req, s);
}

int api_stream_all_events(http_req_t *req, const char *console_sid) {
  const char *type = http_req_query(req, "type");
  const char *subject = http_req_query(req, "subject");
  stream_t *s = calloc(1, sizeof(*s));
  if (!s) return -ERR_INTERNAL;
  s->all = true;
  snprintf(s->console_sid, sizeof(s->console_sid), "%s", console_sid);
  if ((type && *type &&
       (strlen(type) >= sizeof(s->type) ||
        console_type_pattern(type, s->type_like, sizeof(s->type_like)) < 0)) ||
      (subject && strlen(subject) >= sizeof(s->subject))) {
    free(s);
    return http_reply_problem(
        req, ERR_VALIDATION_FAILED, "filter too long",
        json_pack("[{s:s,s:s}]", "field", type ? "type" : "subject", "message", "too long"));
  }
  if (type) snprintf(s->type, sizeof(s->type), "%s", type);
  if (subject) snprintf(s->subject, sizeof(s->subject), "%s", subject);
  return stream_open(req, s);
}

void api_stream_shutdown(void) {
  pthread_mutex_lock(&streams_lock);
  for (stream_t *s = streams; s; s = s->next) {
    s->closing = true;
    wake(s);
  }
  pthread_mutex_unlock(&streams_lock);
  pthread_mutex_lock(&start_lock);
  if (atomic_load(&notifier_running)) {
    store_remove_commit_hook(notifier_app->store, on_commit, NULL);
    store_unlisten(notifier_app->store, on_note, NULL);
    atomic_store(&notifier_stop, true);
    poke();
    pthread_join(notifier, NULL);
    atomic_store(&notifier_running, false);
    atomic_store(&notifier_stop, false);
  }
  pthread_mutex_unlock(&start_lock);
}
