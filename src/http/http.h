/* What an API handler sees of an HTTP request, and the helpers it answers with.
 * The gateway (http/server.c) has already matched the route, checked size,
 * content type, the token's tier and the body's shape before a handler runs.
 * A handler either calls one http_reply_* and returns 0, or returns -ERR_* and
 * the gateway answers with the matching problem+json. */
#ifndef IOTFIN_HTTP_HTTP_H
#define IOTFIN_HTTP_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/token.h"

struct app;
typedef struct http_req http_req_t;

/* Who may call a route: a set of these bits. 0 means anybody, no token needed. */
enum {
  HTTP_AUTH_ANONYMOUS = 1 << 0,
  HTTP_AUTH_REGISTRATION = 1 << 1,
  HTTP_AUTH_USER = 1 << 2,
  HTTP_AUTH_DEVICE = 1 << 3,
  HTTP_AUTH_ADMIN = 1 << 4,
};

/* Declarative body schema: one per route, used to validate and to write OpenAPI. */
typedef enum { HTTP_T_STRING, HTTP_T_INT, HTTP_T_BOOL, HTTP_T_OBJECT, HTTP_T_ARRAY } http_type_t;

typedef struct http_field {
  const char *name;
  http_type_t type;
  bool required;
  long min, max;       /* string length, integer value or array size; 0,0 = unbounded */
  const char *pattern; /* documented regex; checked by check below */
  bool (*check)(const char *value); /* extra check for strings; NULL = none */
  const char *enum_values;          /* "a|b|c" for strings; NULL = any */
  const struct http_field *items;   /* for arrays of objects: the item fields */
  const char *description;
} http_field_t;

typedef struct {
  const http_field_t *fields; /* terminated by a field with name NULL */
  bool allow_csv;             /* text/csv accepted as well as application/json */
  bool open;                  /* unknown fields allowed (e.g. webhook bodies) */
} http_body_t;

typedef int (*http_handler_fn)(http_req_t *req);

typedef struct {
  const char *method;
  const char *path; /* /v1/devices/{id} */
  unsigned auth;    /* HTTP_AUTH_* bits; 0 = public */
  http_handler_fn handler;
  const http_body_t *body; /* NULL: no body expected */
  int success_status;
  const char *summary;
  const char *tag;
  bool idempotent_key;    /* honours Idempotency-Key */
  bool auth_rate_limited; /* IOTFIN_AUTH_RATE per client address */
  /* Runs before the body is parsed, on the raw body (webhook signatures); replies
   * and returns < 0 to stop the request. NULL: none. */
  int (*guard)(http_req_t *req);
  /* When it returns false the route does not exist (404), before anything else is
   * checked: the partner mock's routes while IOTFIN_MOCK=off. NULL: always. */
  bool (*enabled)(const struct app *app);
  /* The operator console's session cookie authenticates this route (its guard
   * checks it); documented as the consoleSession scheme. */
  bool console_session;
} http_route_t;

/* Request accessors. Strings are owned by the request and live until it ends. */
struct app *http_req_app(const http_req_t *req);
const char *http_req_method(const http_req_t *req);
const char *http_req_path(const http_req_t *req);
const char *http_req_param(const http_req_t *req, const char *name);
const char *http_req_query(const http_req_t *req, const char *name);
const char *http_req_header(const http_req_t *req, const char *name);
/* Every request header as a new JSON object (names as sent). */
json_t *http_req_headers(const http_req_t *req);
const char *http_req_body(const http_req_t *req, size_t *len);
bool http_req_is_csv(const http_req_t *req);
/* The parsed JSON body (borrowed), NULL when there is none. */
json_t *http_req_json(const http_req_t *req);
/* The verified token's claims, or NULL on public and admin routes. */
const auth_claims_t *http_req_claims(const http_req_t *req);
const char *http_req_id(const http_req_t *req);
/* The Idempotency-Key this request runs under, for the service that writes its work
 * to record the answer in the same transaction (services/idempotency.h); NULL when
 * the request has none. */
struct idem_pending *http_req_idem(http_req_t *req);
const char *http_req_client(const http_req_t *req);

/* Reads ?limit= (default 50, above 200 means 200) and ?cursor= (NULL when absent).
 * On a bad limit it replies 400 validation_failed and returns -1: the handler then
 * returns 0. */
int http_req_page(http_req_t *req, int *limit, const char **cursor);

/* Replies. body is stolen. Each returns 0, so handlers can `return http_reply_...`. */
int http_reply_json(http_req_t *req, int status, json_t *body);
/* The same for a body already written as JSON text (malloc'd; stolen). */
int http_reply_json_text(http_req_t *req, int status, char *json, size_t len);
int http_reply_text(http_req_t *req, int status, const char *content_type, const char *text);
/* problem+json for err (-ERR_* or ERR_*), with detail (may be NULL) and, for
 * validation failures, errors = [{field, message}] (stolen, may be NULL). */
int http_reply_problem(http_req_t *req, int err, const char *detail, json_t *errors);
/* Streams: fn fills buf with up to max bytes and returns how many, 0 after
 * suspending the connection (http_conn_suspend) until there is more, or -1 to end
 * the stream. free_fn(cls) runs when the request ends. A stream does not count as
 * in flight for a graceful stop. */
typedef long (*http_stream_fn)(void *cls, char *buf, size_t max);
int http_reply_stream(http_req_t *req, const char *content_type, http_stream_fn fn,
                      void (*free_fn)(void *cls), void *cls);
/* The request's connection, for suspending and resuming a stream. */
void *http_req_connection(http_req_t *req);
void http_conn_suspend(void *conn);
void http_conn_resume(void *conn);

/* Runs fn (a handler) on the gateway's bounded pool of worker threads instead of
 * this request thread, for work that waits on a partner: the connection is
 * suspended until fn has replied, so the request threads never wait. The handler
 * returns what this returns, HTTP_OFFLOADED, and then must not touch req again: a
 * worker may already be running fn. When the pool's queue is full it answers 503
 * unavailable with Retry-After and returns 0. fn follows the handler contract; on
 * the worker, replies are held and sent when the connection resumes. */
#define HTTP_OFFLOADED 1
int http_req_offload(http_req_t *req, http_handler_fn fn);
/* The next reply is sent delay_ms later. No thread waits meanwhile: the connection
 * is suspended and the gateway's timer resumes it. Request threads only. */
void http_reply_delay(http_req_t *req, long delay_ms);

/* Adds a header to the reply about to be sent. */
void http_reply_header(http_req_t *req, const char *name, const char *value);

#endif
