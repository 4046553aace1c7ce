/* GET /v1/events/stream: Server-Sent Events about the caller's devices, and
 * GET /console/api/stream: every event, for the operator console (optionally
 * filtered by type and subject), while its console session lasts. Each
 * stream reads the event log after its last event; with nothing to send it
 * suspends its connection, and the "sse-notify" thread resumes suspended streams
 * when the log grows (checked every 100 ms) or a heartbeat is due (every 15 s).
 * streams_lock guards the registry and each stream's suspended flag. */
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
#include "core/log.h"
#include "core/timeutil.h"
#include "services/console.h"
#include "services/console_sessions.h"
#include "services/events.h"

#define HEARTBEAT_MS 15000
#define BATCH 50

typedef struct stream {
  app_t *app;
  void *conn;
  char user_id[64];
  /* Console streams: every event (no user), type filter as a LIKE pattern and
   * subject ("" = any), and the console session that must stay signed in. */
  bool all;
  char type_like[200], subject[200];
  char console_sid[CONSOLE_SECRET_LEN + 1];
  int64_t last_seq;
  char *pending;
  size_t pending_len, pending_off;
  int64_t last_write_ms;
  bool suspended, closing;
  struct stream *next;
} stream_t;

static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;
static stream_t *streams;
static pthread_t notifier;
static atomic_bool notifier_running, notifier_stop;
static app_t *notifier_app;

typedef struct {
  stream_t *s;
  json_t *items;
  int64_t max_seq;
} fetch_t;

/* Every event after the stream's last, as filtered. The scan stops at the log's
 * top as it was when it began, and a batch shorter than BATCH moves the stream
 * there, so a filter that matches nothing does not rescan the same rows. */
static int fetch_all_tx(store_tx_t *tx, void *arg) {
  fetch_t *f = arg;
  stream_t *s = f->s;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT COALESCE(MAX(seq), 0) FROM events", "");
  if (n < 0) return n;
  int64_t top = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  const char *type = s->type_like[0] ? s->type_like : NULL;
  const char *subject = s->subject[0] ? s->subject : NULL;
  n = store_exec(tx, &rows,
                 "SELECT " EVENTS_COLUMNS " FROM events WHERE seq > ? AND seq <= ? "
                 "AND (? IS NULL OR type LIKE ? ESCAPE '\\') AND (? IS NULL OR subject = ?) "
                 "ORDER BY seq LIMIT ?",
                 "iissssi", s->last_seq, top, type, type, subject, subject, (int64_t)BATCH);
  if (n < 0) return n;
  f->items = json_array();
  for (int i = 0; i < n; i++) {
    json_array_append_new(f->items, events_row_to_json(rows, i));
    f->max_seq = store_rows_int(rows, i, 0);
  }
  if (n < BATCH && top > f->max_seq) f->max_seq = top;
  store_rows_free(&rows);
  return 0;
}

static int fetch_tx(store_tx_t *tx, void *arg) {
  fetch_t *f = arg;
  if (f->s->all) return fetch_all_tx(tx, arg);
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT " EVENTS_COLUMNS " FROM events WHERE seq > ? AND subject IN "
                     "(SELECT 'devices/' || id FROM devices WHERE owner_id = ?) "
                     "ORDER BY seq LIMIT ?",
                     "isi", f->s->last_seq, f->s->user_id, (int64_t)BATCH);
  if (n < 0) return n;
  f->items = json_array();
  for (int i = 0; i < n; i++) {
    json_array_append_new(f->items, events_row_to_json(rows, i));
    f->max_seq = store_rows_int(rows, i, 0);
  }
  store_rows_free(&rows);
  return 0;
}

static void append(stream_t *s, const char *text) {
  size_t add = strlen(text);
  char *p = realloc(s->pending, s->pending_len + add + 1);
  if (!p) return;
  memcpy(p + s->pending_len, text, add + 1);
  s->pending = p;
  s->pending_len += add;
}

/* Fills s->pending with new events, or a heartbeat when one is due. */
static void refill(stream_t *s) {
  fetch_t f = {s, NULL, s->last_seq};
  if (store_read(s->app->store, fetch_tx, &f) == 0) {
    size_t i;
    json_t *ev;
    json_array_foreach(f.items, i, ev) {
      char *data = json_dumps(ev, JSON_COMPACT);
      size_t cap = strlen(data) + 256;
      char *frame = malloc(cap);
      /* Console streams leave out `event:` so that a browser's EventSource hands
       * every event to one onmessage: the type is in the data. */
      if (s->all)
        snprintf(frame, cap, "id: %s\ndata: %s\n\n", json_string_value(json_object_get(ev, "id")),
                 data);
      else
        snprintf(frame, cap, "id: %s\nevent: %s\ndata: %s\n\n",
                 json_string_value(json_object_get(ev, "id")),
                 json_string_value(json_object_get(ev, "type")), data);
      append(s, frame);
      free(frame);
      free(data);
    }
    s->last_seq = f.max_seq;
  }
  json_decref(f.items);
  if (!s->pending_len && time_mono_ms() - s->last_write_ms >= HEARTBEAT_MS)
    append(s, ": heartbeat\n\n");
}

static long stream_fill(void *cls, char *buf, size_t max) {
  stream_t *s = cls;
  if (s->closing) return -1;
  if (s->pending_off == s->pending_len) {
    /* A console stream ends with its session (sign-out or expiry). */
    if (s->all && console_sessions_check(s->console_sid, time_now_ms(), NULL, NULL) < 0) return -1;
    free(s->pending);
    s->pending = NULL;
    s->pending_len = s->pending_off = 0;
    refill(s);
  }
  if (s->pending_len > s->pending_off) {
    size_t n = s->pending_len - s->pending_off;
    if (n > max) n = max;
    memcpy(buf, s->pending + s->pending_off, n);
    s->pending_off += n;
    s->last_write_ms = time_mono_ms();
    return (long)n;
  }
  pthread_mutex_lock(&streams_lock);
  if (s->closing) {
    pthread_mutex_unlock(&streams_lock);
    return -1;
  }
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
      break;
    }
  pthread_mutex_unlock(&streams_lock);
  free(s->pending);
  free(s);
}

static int max_seq_tx(store_tx_t *tx, void *arg) {
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT COALESCE(MAX(seq), 0) FROM events", "");
  if (n > 0) *(int64_t *)arg = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  return n < 0 ? n : 0;
}

static void *notifier_main(void *arg) {
  app_t *app = arg;
  pthread_setname_np(pthread_self(), "sse-notify");
  int64_t seen = -1;
  while (!atomic_load(&notifier_stop)) {
    usleep(100 * 1000);
    int64_t top = 0;
    if (store_read(app->store, max_seq_tx, &top) < 0) continue;
    bool grew = top != seen;
    seen = top;
    int64_t now = time_mono_ms();
    pthread_mutex_lock(&streams_lock);
    for (stream_t *s = streams; s; s = s->next) {
      if (!s->suspended) continue;
      if (grew || now - s->last_write_ms >= HEARTBEAT_MS) {
        s->suspended = false;
        http_conn_resume(s->conn);
      }
    }
    pthread_mutex_unlock(&streams_lock);
  }
  return NULL;
}

typedef struct {
  const char *id;
  int64_t seq;
} seq_q_t;

static int seq_of_tx(store_tx_t *tx, void *arg) {
  seq_q_t *q = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT seq FROM events WHERE id = ?", "s", q->id);
  if (n > 0) q->seq = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  return n < 0 ? n : n;
}

/* Opens the stream s (user or console fields set) on req's connection. */
static int stream_open(http_req_t *req, stream_t *s) {
  app_t *app = http_req_app(req);
  if (!atomic_exchange(&notifier_running, true)) {
    notifier_app = app;
    pthread_create(&notifier, NULL, notifier_main, app);
  }
  s->app = app;
  s->conn = http_req_connection(req);
  const char *last = http_req_header(req, "Last-Event-ID");
  seq_q_t q = {last, -1};
  if (last && store_read(app->store, seq_of_tx, &q) > 0) {
    s->last_seq = q.seq; /* resume after that event */
  } else {
    int64_t top = 0;
    store_read(app->store, max_seq_tx, &top);
    s->last_seq = top; /* new events only */
  }
  s->last_write_ms = time_mono_ms();
  append(s, ": stream open\nretry: 2000\n\n");
  pthread_mutex_lock(&streams_lock);
  s->next = streams;
  streams = s;
  pthread_mutex_unlock(&streams_lock);
  return http_reply_stream(req, "text/event-stream", stream_fill, stream_free, s);
}

int api_stream_events(http_req_t *req) {
  stream_t *s = calloc(1, sizeof(*s));
  if (!s) return -ERR_INTERNAL;
  snprintf(s->user_id, sizeof(s->user_id), "%s", http_req_claims(req)->sub);
  return stream_open(req, s);
}

int api_stream_all_events(http_req_t *req, const char *console_sid) {
  const char *type = http_req_query(req, "type");
  const char *subject = http_req_query(req, "subject");
  stream_t *s = calloc(1, sizeof(*s));
  if (!s) return -ERR_INTERNAL;
  s->all = true;
  snprintf(s->console_sid, sizeof(s->console_sid), "%s", console_sid);
  if ((type && *type && console_type_pattern(type, s->type_like, sizeof(s->type_like)) < 0) ||
      (subject && strlen(subject) >= sizeof(s->subject))) {
    free(s);
    return http_reply_problem(
        req, ERR_VALIDATION_FAILED, "filter too long",
        json_pack("[{s:s,s:s}]", "field", type ? "type" : "subject", "message", "too long"));
  }
  if (subject) snprintf(s->subject, sizeof(s->subject), "%s", subject);
  return stream_open(req, s);
}

void api_stream_shutdown(void) {
  pthread_mutex_lock(&streams_lock);
  for (stream_t *s = streams; s; s = s->next) {
    s->closing = true;
    if (s->suspended) {
      s->suspended = false;
      http_conn_resume(s->conn);
    }
  }
  pthread_mutex_unlock(&streams_lock);
  if (atomic_load(&notifier_running)) {
    atomic_store(&notifier_stop, true);
    pthread_join(notifier, NULL);
    atomic_store(&notifier_running, false);
    atomic_store(&notifier_stop, false);
  }
}
