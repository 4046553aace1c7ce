/* Gateway glue between libmicrohttpd and the route table. For each request, in
 * order: request id, route match (404/405), body limit, content type, token and
 * tier, JSON parse and body validation, the handler, and problem+json for any
 * error. The HTTP metrics, and an access-log line as IOTFIN_ACCESS_LOG says, are
 * written when it completes. libmicrohttpd's own threads never wait: a request that
 * writes (any method but GET and HEAD) is dispatched on the write pool, where it may
 * wait for its group commit; a handler that must wait on a partner hands its work
 * to the partner pool (both http/defer.c) with its connection suspended, and a
 * delayed reply waits on the defer timer. Each resumes the connection, and
 * libmicrohttpd then calls on_request again to send the reply. */
#include "http/server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netdb.h>
#include <sched.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/ids.h"
#include "core/jsontext.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "http/defer.h"
#include "http/ratelimit.h"
#include "http/router.h"
#include "http/validate.h"
#include "services/idempotency.h"
#include "services/sessions.h"
#include "store/store.h"

#define MAX_REPLY_HEADERS 8
/* libmicrohttpd's threads only read, parse and answer what needs no waiting, so a
 * few (one a core, at least 2) serve every connection; more only add context
 * switches. On 2 cores, `make bench` (64 connections) measured GET /v1/devices/{id}
 * at p99 11.9 ms with the 16 threads this replaced, 4.7 ms with 2 (docs/BENCHMARKS.md). */
#define HTTP_THREADS_MIN 2
#define HTTP_THREADS_MAX 8
/* Requests that write, running at once: each waits for its group commit, so this
 * is how many writes can share one commit; queued beyond that, and a request that
 * finds the queue full is answered 503 at once. */
#define WRITE_WORKERS 64
#define WRITE_QUEUE 4096
/* Partner calls waiting at once: workers running them, and queued beyond that.
 * A call that finds the queue full is answered 503 at once. */
#define DEFER_WORKERS 16
#define DEFER_QUEUE 1024
/* Delayed replies (the partner mock's delay_ms) waiting at once. */
#define DEFER_TIMERS 4096
/* A request slower than this is logged even when only errors are. */
#define SLOW_REQUEST_S 1.0
/* Our own limits on the request head, kept below libmicrohttpd's memory pool
 * (HEAD_POOL) so that we answer them as problem+json; a head past the pool gets
 * libmicrohttpd's own plain answer, which it offers no way to replace. */
#define MAX_URL 8192
#define MAX_HEADERS (16 * 1024)
#define HEAD_POOL (64 * 1024)

struct http_server {
  struct MHD_Daemon *daemon;
  app_t *app;
  const http_route_t *routes;
  int nroutes;
  int port;
  atomic_int in_flight;
  http_defer_t *defer;     /* partner calls, and the timer of delayed replies */
  http_defer_t *writes;    /* requests that write */
  atomic_ulong access_seq; /* successes seen, for IOTFIN_ACCESS_LOG=sample:N */
};

struct http_req {
  http_server_t *srv;
  struct MHD_Connection *conn;
  const http_route_t *route; /* NULL until matched */
  char method[16];
  char *path;
  char request_id[IDS_UUID_LEN + 28];
  char client[64];
  char *body;
  size_t body_len, body_cap;
  bool too_large, replied;
  json_t *json;
  auth_claims_t claims;
  bool has_claims;
  int status;
  int64_t start_us;
  int nheaders;
  char *hnames[MAX_REPLY_HEADERS], *hvalues[MAX_REPLY_HEADERS];
  const char *route_label; /* the path pattern of a 405, for metrics */
  bool streaming;          /* a stream: no longer counted in in_flight */
  bool capture;            /* keep a copy of the reply for the idempotency record */
  char *captured;
  bool idem_open;             /* an Idempotency-Key record waits for this reply */
  idem_pending_t idem;        /* that key, for a service to record its answer with */
  bool deferred;              /* suspended: a worker or the timer resumes it */
  bool hold;                  /* replies are kept in held, not queued (off-thread) */
  long delay_ms;              /* http_reply_delay: hold the next reply this long */
  http_handler_fn offload_fn; /* the work a defer worker runs */
  /* On the write pool: set when the request went on to the partner pool, whose
   * worker owns it from then on (a flag on the write worker's stack). */
  bool *handed;
  struct MHD_Response *held; /* queued by on_request once the connection resumes */
  /* Last: req_new zeroes only what comes before it. Its 2 KiB of parameter room is
   * filled by the router, which sets nparams, and read no further than nparams. */
  http_match_t match;
};

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct app *http_req_app(const http_req_t *r) {
  return r->srv->app;
}
const char *http_req_method(const http_req_t *r) { return r->method; }
const char *http_req_path(const http_req_t *r) { return r->path; }
const char *http_req_id(const http_req_t *r) { return r->request_id; }
const char *http_req_client(const http_req_t *r) { return r->client; }
json_t *http_req_json(const http_req_t *r) { return r->json; }
const auth_claims_t *http_req_claims(const http_req_t *r) {
  return r->has_claims ? &r->claims : NULL;
}

const char *http_req_param(const http_req_t *r, const char *name) {
  for (int i = 0; i < r->match.nparams; i++)
    if (strcmp(r->match.names[i], name) == 0) return r->match.values[i];
  return NULL;
}

const char *http_req_query(const http_req_t *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_req_header(const http_req_t *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

static enum MHD_Result add_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value) {
  json_object_set_new(cls, key, json_string(value ? value : ""));
  return MHD_YES;
}

json_t *http_req_headers(const http_req_t *r) {
  json_t *o = json_object();
  MHD_get_connection_values(r->conn, MHD_HEADER_KIND, add_header, o);
  return o;
}

const char *http_req_body(const http_req_t *r, size_t *len) {
  if (len) *len = r->body_len;
  return r->body ? r->body : "";
}

static bool media_type_is(const char *ct, const char *want) {
  if (!ct) return false;
  size_t n = strlen(want);
  return strncasecmp(ct, want, n) == 0 && (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

bool http_req_is_csv(const http_req_t *r) {
  return media_type_is(http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE), "text/csv");
}

int http_req_page(http_req_t *r, int *limit, const char **cursor) {
  *cursor = http_req_query(r, "cursor");
  if (*cursor && !**cursor) *cursor = NULL;
  if (http_validate_limit(http_req_query(r, "limit"), limit) < 0) {
    http_reply_problem(
        r, ERR_VALIDATION_FAILED, "limit must be a positive integer",
        json_pack("[{s:s,s:s}]", "field", "limit", "message", "must be a positive integer"));
    return -1;
  }
  return 0;
}

void http_reply_header(http_req_t *r, const char *name, const char *value) {
  if (r->nheaders == MAX_REPLY_HEADERS) return;
  r->hnames[r->nheaders] = strdup(name);
  r->hvalues[r->nheaders] = strdup(value);
  r->nheaders++;
}

static void resume_fire(void *item, bool cancelled) {
  http_req_t *r = item;
  MHD_resume_connection(r->conn); /* last touch: the request may end at once */
}

/* Suspends the connection of a request whose reply is held until due_ms. Runs in
 * the access handler. A full timer sends the reply now instead. */
static void hold_until(http_req_t *r, int64_t due_ms) {
  r->deferred = true;
  MHD_suspend_connection(r->conn);
  if (http_defer_at(r->srv->defer, due_ms, resume_fire, r) < 0) {
    log_warn("http", "cannot hold a delayed reply (timer full or stopping); sending it now");
    MHD_resume_connection(r->conn);
  }
}

static int send_buffer(http_req_t *r, int status, const char *ctype, char *buf, size_t len) {
  if (r->replied) {
    free(buf);
    log_error("http", "second reply to one request (%s %s) ignored", r->method, r->path);
    return 0;
  }
  if (r->capture) r->captured = strndup(buf, len);
  struct MHD_Response *resp = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(buf);
    return -ERR_INTERNAL;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
  MHD_add_response_header(resp, "X-Request-Id", r->request_id);
  for (int i = 0; i < r->nheaders; i++)
    MHD_add_response_header(resp, r->hnames[i], r->hvalues[i]);
  r->status = status;
  r->replied = true;
  if (r->hold) {
    r->held = resp; /* a worker's reply: the resumed connection sends it */
    return 0;
  }
  if (r->delay_ms > 0) {
    r->held = resp;
    hold_until(r, time_mono_ms() + r->delay_ms);
    return 0;
  }
  MHD_queue_response(r->conn, (unsigned)status, resp);
  MHD_destroy_response(resp);
  return 0;
}

typedef struct {
  http_stream_fn fn;
  void (*free_fn)(void *);
  void *cls;
} stream_t;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  stream_t *s = cls;
  long n = s->fn(s->cls, buf, max);
  return n < 0 ? MHD_CONTENT_READER_END_OF_STREAM : (ssize_t)n;
}

static void stream_free(void *cls) {
  stream_t *s = cls;
  if (s->free_fn) s->free_fn(s->cls);
  free(s);
}

int http_reply_stream(http_req_t *r, const char *ctype, http_stream_fn fn,
                      void (*free_fn)(void *cls), void *cls) {
  stream_t *s = calloc(1, sizeof(*s));
  if (!s) return -ERR_INTERNAL;
  *s = (stream_t){fn, free_fn, cls};
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, stream_read, s, stream_free);
  if (!resp) {
    free(s);
    return -ERR_INTERNAL;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  MHD_add_response_header(resp, "X-Request-Id", r->request_id);
  for (int i = 0; i < r->nheaders; i++)
    MHD_add_response_header(resp, r->hnames[i], r->hvalues[i]);
  MHD_queue_response(r->conn, 200, resp);
  MHD_destroy_response(resp);
  r->status = 200;
  r->replied = true;
  if (!r->streaming) {
    r->streaming = true;
    atomic_fetch_sub(&r->srv->in_flight, 1); /* streams stay open; a stop ends them */
  }
  return 0;
}

void *http_req_connection(http_req_t *r) { return r->conn; }
void http_conn_suspend(void *conn) { MHD_suspend_connection(conn); }
void http_conn_resume(void *conn) { MHD_resume_connection(conn); }

void http_reply_delay(http_req_t *r, long delay_ms) {
  if (!r->hold || r->handed) r->delay_ms = delay_ms;
}

int http_reply_text(http_req_t *r, int status, const char *ctype, const char *text) {
  char *buf = strdup(text);
  return buf ? send_buffer(r, status, ctype, buf, strlen(buf)) : -ERR_INTERNAL;
}

int http_reply_json(http_req_t *r, int status, json_t *body) {
  size_t len = 0;
  char *buf = json_text(body, &len);
  json_decref(body);
  return http_reply_json_text(r, status, buf, len);
}

int http_reply_json_text(http_req_t *r, int status, char *json, size_t len) {
  if (!json) return -ERR_INTERNAL;
  return send_buffer(r, status, "application/json", json, len);
}

int http_reply_problem(http_req_t *r, int err, const char *detail, json_t *errors) {
  if (errors_status(err) == 401 && r->route && r->route->auth)
    http_reply_header(r, "WWW-Authenticate", "Bearer realm=\"iotfin\"");
  /* A 503 without a word of its own is most often the disk: say so when it is. */
  if (!detail && errors_status(err) == 503) detail = store_failure(r->srv->app->store);
  json_t *p = http_problem_new(err, detail, errors, r->path);
  char *buf = json_text(p, NULL);
  json_decref(p);
  if (!buf) return -ERR_INTERNAL;
  return send_buffer(r, errors_status(err), "application/problem+json", buf, strlen(buf));
}

/* Sets r->claims for bearer routes; admin routes compare the admin token. */
static int authenticate(http_req_t *r) {
  unsigned need = r->route->auth;
  const char *h = http_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
  if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7])
    return http_reply_problem(r, ERR_UNAUTHENTICATED, "a bearer token is required", NULL), -1;
  const char *tok = h + 7;
  app_t *app = r->srv->app;

  if (need & HTTP_AUTH_ADMIN) {
    /* Hash both sides so the comparison is constant-time whatever the lengths. */
    unsigned char a[32], b[32];
    crypto_generichash(a, sizeof(a), (const unsigned char *)tok, strlen(tok), NULL, 0);
    crypto_generichash(b, sizeof(b), (const unsigned char *)app->admin_token,
                       strlen(app->admin_token), NULL, 0);
    if (sodium_memcmp(a, b, sizeof(a)) == 0) return 0;
    if (need == HTTP_AUTH_ADMIN) {
      /* A valid user token on an admin route is the wrong principal, not a bad one. */
      auth_claims_t c;
      /* A revoked or expired session's token is a bad token here as everywhere. */
      if (auth_token_verify(app->keys, tok, time_now_ms() / 1000, &c) == 0 &&
          sessions_check(app, &c) == 0)
        return http_reply_problem(r, ERR_FORBIDDEN, "this route needs the admin token", NULL), -1;
      return http_reply_problem(r, ERR_UNAUTHENTICATED, "invalid admin token", NULL), -1;
    }
  }
  if (auth_token_verify(app->keys, tok, time_now_ms() / 1000, &r->claims) < 0)
    return http_reply_problem(r, ERR_UNAUTHENTICATED, "invalid or expired token", NULL), -1;
  if (sessions_check(app, &r->claims) < 0)
    return http_reply_problem(r, ERR_UNAUTHENTICATED, "session revoked or expired", NULL), -1;
  r->has_claims = true;
  static const struct {
    const char *tier;
    unsigned bit;
  } tiers[] = {{"anonymous", HTTP_AUTH_ANONYMOUS},
               {"registration", HTTP_AUTH_REGISTRATION},
               {"user", HTTP_AUTH_USER},
               {"device", HTTP_AUTH_DEVICE}};
  for (size_t i = 0; i < sizeof(tiers) / sizeof(tiers[0]); i++)
    if (strcmp(r->claims.tier, tiers[i].tier) == 0 && (need & tiers[i].bit)) return 0;
  char detail[96];
  snprintf(detail, sizeof(detail), "a %s token cannot call this route", r->claims.tier);
  return http_reply_problem(r, ERR_FORBIDDEN, detail, NULL), -1;
}

static bool run_handler(http_req_t *r);

struct idem_pending *http_req_idem(http_req_t *r) {
  return r->idem_open ? &r->idem : NULL;
}

/* Records the reply of a first request under its Idempotency-Key (a 5xx or no
 * reply releases the key instead), unless the service already wrote it with its
 * work. Runs once the reply is known, which for an offloaded handler is on its
 * worker. */
static void idem_close(http_req_t *r) {
  if (!r->idem_open) return;
  r->idem_open = false;
  if (r->idem.status && r->idem.status == r->status) return; /* committed with the work */
  app_t *app = r->srv->app;
  const char *principal = r->has_claims ? r->claims.sub : "admin";
  const char *key = http_req_header(r, "Idempotency-Key");
  if (r->status >= 500 || !r->captured)
    idem_abort(app, principal, key);
  else
    idem_finish(app, principal, key, r->status, r->captured);
}

/* The Idempotency-Key middleware: replays the first answer to a key, refuses the
 * key with another body, and records the answer of a first request. */
static void run_idempotent(http_req_t *r) {
  const char *key = http_req_header(r, "Idempotency-Key");
  if (!*key || strlen(key) > 255) {
    http_reply_problem(r, ERR_VALIDATION_FAILED, "Idempotency-Key must be 1-255 characters",
                       json_pack("[{s:s,s:s}]", "field", "Idempotency-Key", "message",
                                 "must be 1-255 characters"));
    return;
  }
  app_t *app = r->srv->app;
  const char *principal = r->has_claims ? r->claims.sub : "admin";
  unsigned char h[32];
  char hex[65], route[300];
  crypto_generichash(h, sizeof(h), (const unsigned char *)(r->body ? r->body : ""), r->body_len,
                     NULL, 0);
  sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
  snprintf(route, sizeof(route), "%s %s", r->method, r->path);
  idem_replay_t replay;
  int rc = idem_begin(app, principal, key, route, hex, &replay);
  if (rc == 1) {
    http_reply_header(r, "Idempotent-Replayed", "true");
    const char *ctype = replay.status >= 400 ? "application/problem+json" : "application/json";
    send_buffer(r, replay.status, ctype, replay.response, strlen(replay.response));
    return;
  }
  if (rc == -ERR_IDEMPOTENCY_KEY_REUSED) {
    http_reply_problem(r, rc, "this Idempotency-Key was used with another request", NULL);
    return;
  }
  if (rc == -ERR_CONFLICT) {
    http_reply_problem(r, rc, "a request with this Idempotency-Key is still running", NULL);
    return;
  }
  if (rc < 0) {
    http_reply_problem(r, rc, NULL, NULL);
    return;
  }
  r->capture = true;
  r->idem_open = true;
  r->idem = (idem_pending_t){principal, key, 0};
  if (run_handler(r)) return; /* offloaded: the worker closes the record */
  if (!r->deferred) idem_close(r);
}

/* Everything after the body has arrived. */
static void dispatch(http_req_t *r);

/* A write worker dispatches a request that writes; its reply is held, and resuming
 * the connection (now, or when a delayed reply is due) hands it to libmicrohttpd. */
static void write_run(void *item, bool cancelled) {
  http_req_t *r = item;
  bool handed = false;
  r->hold = true;
  r->handed = &handed;
  if (cancelled) {
    http_reply_header(r, "Retry-After", "1");
    http_reply_problem(r, ERR_UNAVAILABLE, "the server is stopping", NULL);
  } else {
    dispatch(r);
  }
  if (handed) return; /* the partner pool owns it now */
  r->handed = NULL;
  idem_close(r);
  long delay = r->delay_ms;
  if (delay > 0 && http_defer_at(r->srv->defer, time_mono_ms() + delay, resume_fire, r) == 0)
    return;
  MHD_resume_connection(r->conn); /* last touch: the request may end at once */
}

/* Requests that may write leave libmicrohttpd's threads for the write pool. */
static void dispatch_or_queue(http_req_t *r) {
  if (strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0) {
    dispatch(r);
    return;
  }
  r->deferred = true;
  MHD_suspend_connection(r->conn);
  if (http_defer_submit(r->srv->writes, write_run, r) == 0) return;
  r->hold = true;
  http_reply_header(r, "Retry-After", "1");
  http_reply_problem(r, ERR_UNAVAILABLE, "too many writes are waiting; try again shortly", NULL);
  MHD_resume_connection(r->conn);
}

static void dispatch(http_req_t *r) {
  const http_route_t *rt = r->route;
  if (r->too_large) {
    http_reply_problem(r, ERR_PAYLOAD_TOO_LARGE, "the body is larger than 64 KiB", NULL);
    return;
  }
  bool csv = false;
  bool empty_ok = false;
  if (rt->body && r->body_len == 0) {
    /* A body whose fields are all optional may be left out entirely. */
    empty_ok = true;
    for (const http_field_t *f = rt->body->fields; f && f->name; f++)
      if (f->required) empty_ok = false;
  }
  if (rt->body && !empty_ok) {
    const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    csv = rt->body->allow_csv && media_type_is(ct, "text/csv");
    if (!csv && !media_type_is(ct, "application/json")) {
      http_reply_problem(r, ERR_UNSUPPORTED_MEDIA_TYPE,
                         rt->body->allow_csv ? "send application/json or text/csv"
                                             : "send application/json",
                         NULL);
      return;
    }
  }
  if (rt->auth_rate_limited) {
    int retry = 1;
    if (!http_ratelimit_take(r->client, r->srv->app->cfg->auth_rate, time_now_ms(), &retry)) {
      char ra[16];
      snprintf(ra, sizeof(ra), "%d", retry);
      http_reply_header(r, "Retry-After", ra);
      http_reply_problem(r, ERR_RATE_LIMITED, "too many requests from this address", NULL);
      return;
    }
  }
  if (rt->auth && authenticate(r) < 0) return;
  if (rt->guard && rt->guard(r) < 0) {
    if (!r->replied) http_reply_problem(r, ERR_UNAUTHENTICATED, NULL, NULL);
    return;
  }
  if (empty_ok) {
    r->json = json_object();
  } else if (rt->body && !csv) {
    json_error_t jerr;
    r->json = json_loadb(r->body ? r->body : "", r->body_len,
                         JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!r->json) {
      char detail[200];
      snprintf(detail, sizeof(detail), "line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
      http_reply_problem(r, ERR_INVALID_JSON, detail, NULL);
      return;
    }
    json_t *errs = http_validate(rt->body, r->json);
    if (errs) {
      http_reply_problem(r, ERR_VALIDATION_FAILED, "the body does not match the schema", errs);
      return;
    }
  }
  if (rt->idempotent_key && http_req_header(r, "Idempotency-Key")) {
    run_idempotent(r);
    return;
  }
  run_handler(r);
}

/* Runs fn as the route's handler and answers for it when it did not. */
static bool run_fn(http_req_t *r, http_handler_fn fn) {
  const http_route_t *rt = r->route;
  int rc = fn(r);
  /* Offloaded: the worker owns r now; touch nothing. */
  if (rc == HTTP_OFFLOADED) return true;
  if (rc < 0 && !r->replied) {
    if (errors_status(rc) >= 500)
      log_error("http", "%s %s failed: %s (request %s)", r->method, rt->path, errors_code(rc),
                r->request_id);
    http_reply_problem(r, rc, NULL, NULL);
  } else if (!r->replied) {
    log_error("http", "handler for %s %s returned without replying", r->method, rt->path);
    http_reply_problem(r, ERR_INTERNAL, NULL, NULL);
  }
  return false;
}

static bool run_handler(http_req_t *r) { return run_fn(r, r->route->handler); }

/* A defer worker runs an offloaded handler; its reply is held, and resuming the
 * connection hands it to libmicrohttpd. */
static void offload_run(void *item, bool cancelled) {
  http_req_t *r = item;
  r->hold = true;
  if (cancelled) {
    http_reply_header(r, "Retry-After", "1");
    http_reply_problem(r, ERR_UNAVAILABLE, "the server is stopping", NULL);
  } else {
    run_fn(r, r->offload_fn);
  }
  idem_close(r);
  MHD_resume_connection(r->conn); /* last touch: the request may end at once */
}

int http_req_offload(http_req_t *r, http_handler_fn fn) {
  if (r->handed) {
    /* On the write pool, suspended already: the partner pool takes it over, so a
     * slow partner holds one of its workers, not one of the write pool's. */
    bool *handed = r->handed;
    r->offload_fn = fn;
    r->handed = NULL;
    *handed = true;
    if (http_defer_submit(r->srv->defer, offload_run, r) == 0) return HTTP_OFFLOADED;
    *handed = false;
    r->handed = handed;
    http_reply_header(r, "Retry-After", "1");
    http_reply_problem(r, ERR_UNAVAILABLE, "too many partner calls are waiting; try again shortly",
                       NULL);
    return 0;
  }
  if (r->hold) return fn(r); /* already off the request thread */
  r->offload_fn = fn;
  r->deferred = true;
  MHD_suspend_connection(r->conn);
  if (http_defer_submit(r->srv->defer, offload_run, r) == 0) return HTTP_OFFLOADED;
  /* Full: answer 503 now. The reply is held like a worker's, and the resumed
   * connection sends it. */
  r->hold = true;
  http_reply_header(r, "Retry-After", "1");
  http_reply_problem(r, ERR_UNAVAILABLE, "too many partner calls are waiting; try again shortly",
                     NULL);
  MHD_resume_connection(r->conn);
  return 0;
}

static bool valid_request_id(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 64) return false;
  for (; *s; s++)
    if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '_' || *s == '.')) return false;
  return true;
}

/* A dotted quad, as inet_ntop writes it, without its trip through sprintf on every
 * request. out has room for 16 bytes. */
static void ipv4_text(const struct in_addr *a, char *out) {
  const unsigned char *b = (const unsigned char *)&a->s_addr;
  for (int i = 0; i < 4; i++) {
    unsigned v = b[i];
    if (v >= 100) *out++ = (char)('0' + v / 100);
    if (v >= 10) *out++ = (char)('0' + v / 10 % 10);
    *out++ = (char)('0' + v % 10);
    *out++ = i < 3 ? '.' : 0;
  }
}

static http_req_t *req_new(http_server_t *srv, struct MHD_Connection *conn, const char *url,
                           const char *method) {
  http_req_t *r = malloc(sizeof(*r));
  if (!r) return NULL;
  memset(r, 0, offsetof(http_req_t, match));
  r->match.nparams = 0;
  r->match.pattern = NULL;
  r->srv = srv;
  r->conn = conn;
  r->start_us = now_us();
  snprintf(r->method, sizeof(r->method), "%s", method);
  r->path = strdup(url);
  const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
  if (rid && valid_request_id(rid))
    snprintf(r->request_id, sizeof(r->request_id), "%s", rid);
  else
    ids_uuid7(r->request_id);
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (ci && ci->client_addr) {
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
      ipv4_text(&((const struct sockaddr_in *)sa)->sin_addr, r->client);
    else if (sa->sa_family == AF_INET6)
      inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->client,
                sizeof(r->client));
  }
  atomic_fetch_add(&srv->in_flight, 1);
  return r;
}

typedef struct {
  size_t bytes;
  int content_lengths, transfer_encodings;
  const char *first_cl;
  bool cl_differ;
} head_scan_t;

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value) {
  head_scan_t *h = cls;
  h->bytes += strlen(key) + (value ? strlen(value) : 0) + 4;
  if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
    if (h->content_lengths++ == 0)
      h->first_cl = value ? value : "";
    else if (strcmp(h->first_cl, value ? value : "") != 0)
      h->cl_differ = true;
  } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
    h->transfer_encodings++;
  }
  return MHD_YES;
}

/* Refuses a head that is too big or frames its body ambiguously (two different
 * Content-Lengths, or Content-Length with Transfer-Encoding: the request
 * smuggling shapes). Returns true when it replied. */
static enum MHD_Result scan_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value) {
  *(size_t *)cls += strlen(key) + (value ? strlen(value) : 0) + 2;
  return MHD_YES;
}

static bool refuse_bad_head(http_req_t *r, const char *url) {
  head_scan_t h = {0};
  MHD_get_connection_values(r->conn, MHD_HEADER_KIND, scan_header, &h);
  size_t url_bytes = strlen(url);
  MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, scan_arg, &url_bytes);
  if (url_bytes > MAX_URL) {
    if (strlen(r->path) > 200) r->path[200] = 0; /* the problem and the log name the start only */
    http_reply_problem(r, ERR_URI_TOO_LONG, "the URI is longer than 8192 bytes", NULL);
    return true;
  }
  if (h.bytes > MAX_HEADERS) {
    http_reply_problem(r, ERR_HEADERS_TOO_LARGE, "the header fields exceed 16 KiB", NULL);
    return true;
  }
  if (h.cl_differ) {
    http_reply_problem(r, ERR_BAD_REQUEST, "conflicting Content-Length headers", NULL);
    return true;
  }
  if (h.content_lengths && h.transfer_encodings) {
    http_reply_problem(r, ERR_BAD_REQUEST, "Content-Length together with Transfer-Encoding", NULL);
    return true;
  }
  return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls) {
  http_server_t *srv = cls;
  http_req_t *r = *con_cls;
  if (!r) {
    r = req_new(srv, conn, url, method);
    if (!r) return MHD_NO;
    *con_cls = r;
    if (refuse_bad_head(r, url)) return MHD_YES;
    int idx = http_router_match(srv->routes, srv->nroutes, method, url, &r->match);
    if (idx == -ERR_METHOD_NOT_ALLOWED) {
      r->route_label = r->match.pattern;
      http_reply_header(r, "Allow", r->match.allow);
      char detail[200];
      snprintf(detail, sizeof(detail), "%s is not allowed here; allowed: %s", method,
               r->match.allow);
      http_reply_problem(r, ERR_METHOD_NOT_ALLOWED, detail, NULL);
      return MHD_YES;
    }
    if (idx < 0) {
      http_reply_problem(r, ERR_NOT_FOUND, "no such route", NULL);
      return MHD_YES;
    }
    if (srv->routes[idx].enabled && !srv->routes[idx].enabled(srv->app)) {
      http_reply_problem(r, ERR_NOT_FOUND, "no such route", NULL);
      return MHD_YES;
    }
    r->route = &srv->routes[idx];
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoll(cl, NULL, 10) > HTTP_MAX_BODY) {
      http_reply_problem(r, ERR_PAYLOAD_TOO_LARGE, "the body is larger than 64 KiB", NULL);
      return MHD_YES;
    }
    return MHD_YES;
  }
  if (*upload_size) {
    if (!r->replied && !r->too_large) {
      if (r->body_len + *upload_size > HTTP_MAX_BODY) {
        r->too_large = true;
      } else {
        if (r->body_len + *upload_size + 1 > r->body_cap) {
          size_t cap = (r->body_len + *upload_size + 1) * 2;
          if (cap > HTTP_MAX_BODY + 1) cap = HTTP_MAX_BODY + 1;
          char *nb = realloc(r->body, cap);
          if (!nb) return MHD_NO;
          r->body = nb;
          r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload_data, *upload_size);
        r->body_len += *upload_size;
        r->body[r->body_len] = 0;
      }
    }
    *upload_size = 0;
    return MHD_YES;
  }
  if (r->held) {
    /* Back from a worker or the timer: send what it left. */
    struct MHD_Response *resp = r->held;
    r->held = NULL;
    MHD_queue_response(conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return MHD_YES;
  }
  if (r->deferred) {
    log_error("http", "%s %s resumed without a reply", r->method, r->path);
    return MHD_NO;
  }
  if (!r->replied) dispatch_or_queue(r);
  return MHD_YES;
}

/* Appends s to the buffer as JSON string content (quotes and controls escaped). */
static size_t json_escape(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (; *s && n + 7 < cap; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      out[n++] = '\\';
      out[n++] = (char)ch;
    } else if (ch < 0x20) {
      n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
    } else {
      out[n++] = (char)ch;
    }
  }
  out[n] = 0;
  return n;
}

/* Whether IOTFIN_ACCESS_LOG wants this request's line: every line (all), errors
 * and slow requests only (errors), or those plus one success in N (sample:N). */
static bool access_wanted(http_server_t *srv, const http_req_t *r, double secs) {
  const config_t *cfg = srv->app->cfg;
  if (cfg->access_log == CONFIG_ACCESS_LOG_ALL) return true;
  if (r->status >= 400 || secs >= SLOW_REQUEST_S) return true;
  if (cfg->access_log == CONFIG_ACCESS_LOG_SAMPLE)
    return atomic_fetch_add(&srv->access_seq, 1) % (unsigned long)cfg->access_log_sample == 0;
  return false;
}

/* The access-log line, formatted by hand: it is written once per request and
 * building it through jansson cost more than many handlers. Same shape as
 * log_write's lines. Error lines share the log's storm limit per route and
 * status, so a flood of bad requests cannot fill the disk. */
static void log_access(http_server_t *srv, const http_req_t *r, const char *route, double secs) {
  if (!log_enabled(LOG_INFO) || !access_wanted(srv, r, secs)) return;
  char ts[32], path[600], method[40], line[1300];
  json_escape(path, sizeof(path), r->path);
  json_escape(method, sizeof(method), r->method);
  if (r->status >= 400) {
    char what[700];
    snprintf(what, sizeof(what), "%s %s %d", method, path, r->status);
    if (!log_admit(LOG_INFO, "access", route, r->status, what)) return;
  }
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  int n = snprintf(line, sizeof(line),
                   "{\"time\":\"%s\",\"level\":\"info\",\"module\":\"access\",\"msg\":\"%s %s %d\","
                   "\"request_id\":\"%s\",\"method\":\"%s\",\"path\":\"%s\",\"route\":\"%s\","
                   "\"status\":%d,\"duration_ms\":%.3f,\"client\":\"%s\"}\n",
                   ts, method, path, r->status, r->request_id, method, path, route, r->status,
                   secs * 1000.0, r->client);
  if (n > 0) log_raw(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* The method as a metrics label: made-up methods would each add series. */
static const char *method_label(const char *m) {
  static const char *known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
    if (strcmp(m, known[i]) == 0) return known[i];
  return "other";
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  http_server_t *srv = cls;
  http_req_t *r = *con_cls;
  if (!r) return;
  double secs = (double)(now_us() - r->start_us) / 1e6;
  const char *route = r->route ? r->route->path : r->route_label ? r->route_label : "unmatched";
  /* The counter's labels are the histogram's and the status. */
  char labels[256];
  int n = snprintf(labels, sizeof(labels), "method=\"%s\",route=\"%s\"", method_label(r->method),
                   route);
  metrics_histogram_observe("iotfin_http_request_duration_seconds", labels, secs);
  if (n > 0 && (size_t)n < sizeof(labels))
    snprintf(labels + n, sizeof(labels) - (size_t)n, ",status=\"%d\"", r->status);
  metrics_counter_add("iotfin_http_requests_total", labels, 1);
  log_access(srv, r, route, secs);
  if (r->held) MHD_destroy_response(r->held); /* the client left before it was sent */
  json_decref(r->json);
  for (int i = 0; i < r->nheaders; i++) {
    free(r->hnames[i]);
    free(r->hvalues[i]);
  }
  bool streaming = r->streaming;
  free(r->captured);
  free(r->body);
  free(r->path);
  free(r);
  *con_cls = NULL;
  if (!streaming) atomic_fetch_sub(&srv->in_flight, 1);
}

int http_server_start(app_t *app, const http_route_t *routes, int n, const char *host, int port,
                      http_server_t **out) {
  *out = NULL;
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  char portstr[16];
  snprintf(portstr, sizeof(portstr), "%d", port);
  if (getaddrinfo(host, portstr, &hints, &ai) != 0 || !ai) {
    log_error("http", "cannot resolve listen address %s", host);
    return -ERR_UNAVAILABLE;
  }
  http_server_t *srv = calloc(1, sizeof(*srv));
  srv->app = app;
  srv->routes = routes;
  srv->nroutes = n;
  if (http_defer_start("http-worker", DEFER_WORKERS, DEFER_QUEUE, DEFER_TIMERS, &srv->defer) < 0 ||
      http_defer_start("http-write", WRITE_WORKERS, WRITE_QUEUE, 0, &srv->writes) < 0) {
    log_error("http", "cannot start the request workers");
    http_defer_free(&srv->defer);
    freeaddrinfo(ai);
    free(srv);
    return -ERR_UNAVAILABLE;
  }
  metrics_describe("iotfin_http_requests_total", "counter", "HTTP requests by route and status.");
  metrics_describe("iotfin_http_request_duration_seconds", "histogram",
                   "HTTP request latency by route.");
  /* poll(), not epoll: with a thread pool and epoll, MHD_quiesce_daemon at a stop races
   * each worker removing the listen socket from its epoll set, and libmicrohttpd
   * 0.9.75 aborts the process when it loses ("Failed to remove listen FD from epoll
   * set", seen once under test_63). Each worker polls only its own connections. */
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME;
  if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
  /* HTTPS: libmicrohttpd keeps pointers to the PEM text, which app holds for good. */
  struct MHD_OptionItem tls[] = {
      {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}};
  if (app->tls_cert_pem && app->tls_key_pem) {
    flags |= MHD_USE_TLS;
    tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, app->tls_cert_pem};
    tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, app->tls_key_pem};
  }
  /* The cores this process may run on (a cpuset or taskset may give it fewer than
   * the machine has). */
  cpu_set_t cpus;
  long cores = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus)
                                                              : sysconf(_SC_NPROCESSORS_ONLN);
  unsigned threads = cores < HTTP_THREADS_MIN   ? HTTP_THREADS_MIN
                     : cores > HTTP_THREADS_MAX ? HTTP_THREADS_MAX
                                                : (unsigned)cores;
  srv->daemon =
      MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                       MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT,
                       (unsigned)10000, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HEAD_POOL,
                       MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_NOTIFY_COMPLETED,
                       on_completed, srv, MHD_OPTION_ARRAY, tls, MHD_OPTION_END);
  freeaddrinfo(ai);
  if (!srv->daemon) {
    log_error("http", "cannot listen on %s:%d (address in use or not local?)", host, port);
    http_defer_free(&srv->writes);
    http_defer_free(&srv->defer);
    free(srv);
    return -ERR_UNAVAILABLE;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
  srv->port = di ? di->port : port;
  *out = srv;
  return 0;
}

int http_server_port(const http_server_t *srv) { return srv->port; }

void http_server_stop(http_server_t **psrv, int timeout_ms) {
  http_server_t *srv = *psrv;
  if (!srv) return;
  MHD_socket s = MHD_quiesce_daemon(srv->daemon);
  if (s != MHD_INVALID_SOCKET) close(s);
  /* Delayed replies go out now; partner calls get the time left to finish. */
  http_defer_flush_timers(srv->defer);
  int64_t deadline = time_mono_ms() + timeout_ms;
  while (atomic_load(&srv->in_flight) > 0 && time_mono_ms() < deadline)
    usleep(10000);
  /* Joins the workers, writes first (one may still hand a request to the partner
   * pool): queued calls are answered 503 and every suspended request is resumed,
   * as libmicrohttpd requires before it stops. */
  http_defer_stop(srv->writes);
  http_defer_stop(srv->defer);
  MHD_stop_daemon(srv->daemon);
  http_defer_free(&srv->writes);
  http_defer_free(&srv->defer);
  free(srv);
  *psrv = NULL;
}
