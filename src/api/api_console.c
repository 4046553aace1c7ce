/* The operator console (CONTRACT section 12): its files, compiled into the binary,
 * and its own API under /console/api/. A browser signs in once with the admin
 * token and holds only an HttpOnly, SameSite=Strict cookie naming a console
 * session (services/console_sessions.c); every console API call is checked by
 * api_console_guard, and every state-changing one must also come from this
 * server's own origin and carry the session's CSRF token. The reads reuse the
 * admin handlers and the bus's functions; what they lack is in services/console.c. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "api/console_assets.h"
#include "app.h"
#include "bus/bus.h"
#include "core/errors.h"
#include "core/timeutil.h"
#include "services/console.h"
#include "services/console_sessions.h"

#define COOKIE_NAME "iotfin_console"
#define CSRF_HEADER "X-CSRF-Token"
#define RECENT 10
#define EVENTS_MAX 200

/* The console only loads its own files and talks only to its own origin. */
static const char CSP[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                          "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                          "base-uri 'none'; frame-ancestors 'none'";

static bool is_https(const app_t *app) {
  return app->tls_cert_pem != NULL || (app->cfg && app->cfg->tls_cert[0]);
}

/* The console session id from the Cookie header into sid, or false. */
static bool cookie_sid(http_req_t *req, char sid[CONSOLE_SECRET_LEN + 1]) {
  const char *h = http_req_header(req, "Cookie");
  const size_t nl = strlen(COOKIE_NAME);
  for (const char *p = h; p && *p;) {
    while (*p == ' ' || *p == ';')
      p++;
    const char *end = strchr(p, ';');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == nl + 1 + CONSOLE_SECRET_LEN && strncmp(p, COOKIE_NAME "=", nl + 1) == 0) {
      memcpy(sid, p + nl + 1, CONSOLE_SECRET_LEN);
      sid[CONSOLE_SECRET_LEN] = 0;
      return true;
    }
    p = end;
  }
  return false;
}

/* A state-changing call must come from a page of this server: Origin equal to our
 * own scheme://Host, and (where the browser says) a same-origin fetch. */
static bool same_origin(http_req_t *req) {
  const char *origin = http_req_header(req, "Origin");
  const char *host = http_req_header(req, "Host");
  if (!origin || !host || !*host) return false;
  char own[400];
  snprintf(own, sizeof(own), "%s://%s", is_https(http_req_app(req)) ? "https" : "http", host);
  if (strcasecmp(origin, own) != 0) return false;
  const char *site = http_req_header(req, "Sec-Fetch-Site");
  return !site || strcmp(site, "same-origin") == 0;
}

static bool unsafe_method(const char *m) { return strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0; }

static int forbid(http_req_t *req, const char *why) {
  http_reply_problem(req, ERR_FORBIDDEN, why, NULL);
  return -1;
}

int api_console_guard(http_req_t *req) {
  http_reply_header(req, "Cache-Control", "no-store");
  bool unsafe = unsafe_method(http_req_method(req));
  if (unsafe && !same_origin(req))
    return forbid(req, "console changes must come from the console's own origin");
  char sid[CONSOLE_SECRET_LEN + 1], csrf[CONSOLE_SECRET_LEN + 1];
  int rc = cookie_sid(req, sid)
               ? console_sessions_check(http_req_app(req)->store, sid, time_now_ms(), csrf, NULL)
               : -ERR_UNAUTHENTICATED;
  if (rc == -ERR_UNAVAILABLE) {
    http_reply_problem(req, ERR_UNAVAILABLE, store_failure(http_req_app(req)->store), NULL);
    return -1;
  }
  if (rc < 0) {
    http_reply_problem(req, ERR_UNAUTHENTICATED, "sign in to the console first", NULL);
    return -1;
  }
  if (unsafe) {
    const char *got = http_req_header(req, CSRF_HEADER);
    if (!got || strlen(got) != CONSOLE_SECRET_LEN ||
        sodium_memcmp(got, csrf, CONSOLE_SECRET_LEN) != 0)
      return forbid(req, "the console's CSRF token is missing or wrong");
  }
  return 0;
}

/* Signing in has no session yet: only the origin can be checked. */
int api_console_signin_guard(http_req_t *req) {
  http_reply_header(req, "Cache-Control", "no-store");
  if (!same_origin(req))
    return forbid(req, "console sign-in must come from the console's own origin");
  return 0;
}

/* ---- files ---------------------------------------------------------------------- */

int api_console_redirect(http_req_t *req) {
  http_reply_header(req, "Location", "/console/");
  return http_reply_text(req, 308, "text/plain; charset=utf-8", "/console/\n");
}

int api_console_asset(http_req_t *req) {
  const char *name = http_req_param(req, "file");
  if (!name) name = "index.html";
  for (int i = 0; i < console_assets_count; i++) {
    const console_asset_t *a = &console_assets[i];
    if (strcmp(a->name, name) != 0) continue;
    http_reply_header(req, "Content-Security-Policy", CSP);
    http_reply_header(req, "X-Content-Type-Options", "nosniff");
    http_reply_header(req, "Referrer-Policy", "no-referrer");
    http_reply_header(req, "X-Frame-Options", "DENY");
    /* Revalidated every time: a new binary must not run against an old script. */
    http_reply_header(req, "Cache-Control", "no-cache");
    char *text = strndup((const char *)a->data, a->len);
    if (!text) return -ERR_INTERNAL;
    int rc = http_reply_text(req, 200, a->content_type, text);
    free(text);
    return rc;
  }
  return http_reply_problem(req, ERR_NOT_FOUND, "no such console file", NULL);
}

/* ---- session ---------------------------------------------------------------------- */

static const http_field_t signin_fields[] = {
    {.name = "token",
     .type = HTTP_T_STRING,
     .required = true,
     .min = 1,
     .max = 255,
     .description = "The instance's admin token; never stored by the browser."},
    {0},
};
const http_body_t api_console_signin_body = {signin_fields, false, false};

static json_t *session_json(const char *csrf, int64_t expires_ms) {
  char ts[40];
  time_format_rfc3339(expires_ms, ts, sizeof(ts));
  return json_pack("{s:s,s:s}", "csrf_token", csrf, "expires_at", ts);
}

int api_console_signin(http_req_t *req) {
  app_t *app = http_req_app(req);
  const char *tok = json_string_value(json_object_get(http_req_json(req), "token"));
  /* Hash both sides so the comparison is constant-time whatever the lengths. */
  unsigned char a[32], b[32];
  crypto_generichash(a, sizeof(a), (const unsigned char *)tok, strlen(tok), NULL, 0);
  crypto_generichash(b, sizeof(b), (const unsigned char *)app->admin_token,
                     strlen(app->admin_token), NULL, 0);
  if (sodium_memcmp(a, b, sizeof(a)) != 0)
    return http_reply_problem(req, ERR_UNAUTHENTICATED, "that is not this instance's admin token",
                              NULL);
  char sid[CONSOLE_SECRET_LEN + 1], csrf[CONSOLE_SECRET_LEN + 1], cookie[256];
  int64_t expires_ms;
  int rc = console_sessions_create(app->store, time_now_ms(), sid, csrf, &expires_ms);
  if (rc < 0) return rc;
  snprintf(cookie, sizeof(cookie),
           "%s=%s; Path=/console; Max-Age=%lld; HttpOnly; SameSite=Strict%s", COOKIE_NAME, sid,
           (long long)(CONSOLE_SESSION_TTL_MS / 1000), is_https(app) ? "; Secure" : "");
  sodium_memzero(sid, sizeof(sid));
  http_reply_header(req, "Set-Cookie", cookie);
  return http_reply_json(req, 201, session_json(csrf, expires_ms));
}

int api_console_whoami(http_req_t *req) {
  char sid[CONSOLE_SECRET_LEN + 1], csrf[CONSOLE_SECRET_LEN + 1];
  int64_t expires_ms = 0;
  if (!cookie_sid(req, sid))
    return -ERR_UNAUTHENTICATED; /* the guard let it through: it just expired */
  int rc = console_sessions_check(http_req_app(req)->store, sid, time_now_ms(), csrf, &expires_ms);
  if (rc < 0) return rc;
  return http_reply_json(req, 200, session_json(csrf, expires_ms));
}

int api_console_signout(http_req_t *req) {
  char sid[CONSOLE_SECRET_LEN + 1], cookie[200];
  if (cookie_sid(req, sid)) {
    int rc = console_sessions_delete(http_req_app(req)->store, sid);
    if (rc < 0) return rc; /* not signed out: say so rather than drop the cookie */
  }
  snprintf(cookie, sizeof(cookie), "%s=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict%s",
           COOKIE_NAME, is_https(http_req_app(req)) ? "; Secure" : "");
  http_reply_header(req, "Set-Cookie", cookie);
  return http_reply_text(req, 204, "application/json", "");
}

/* ---- reads ---------------------------------------------------------------------- */

/* One call for the overview page: queues, alarms, device counts and the log's top,
 * stamped with the server's clock so the page can compute events per second. */
int api_console_overview(http_req_t *req) {
  app_t *app = http_req_app(req);
  json_t *queues = NULL, *alarms = NULL, *counts = NULL;
  int rc = bus_queue_stats(app, &queues);
  if (rc == 0) rc = bus_alarms(app, &alarms);
  if (rc == 0) rc = console_counts(app, &counts);
  if (rc < 0) {
    json_decref(queues);
    json_decref(alarms);
    json_decref(counts);
    return rc;
  }
  char ts[40];
  int64_t now = time_now_ms();
  time_format_rfc3339(now, ts, sizeof(ts));
  json_object_set_new(counts, "queues", queues);
  json_object_set_new(counts, "alarms", alarms);
  json_object_set_new(counts, "now_ms", json_integer(now));
  json_object_set_new(counts, "now", json_string(ts));
  json_object_set_new(counts, "mock", json_boolean(app->cfg->mock));
  return http_reply_json(req, 200, counts);
}

int api_console_device(http_req_t *req) {
  json_t *out;
  int rc = console_device(http_req_app(req), http_req_param(req, "key"), RECENT, &out);
  if (rc == -ERR_NOT_FOUND)
    return http_reply_problem(req, rc, "no device has that id or serial", NULL);
  if (rc < 0) return rc;
  return http_reply_json(req, 200, out);
}

int api_console_events(http_req_t *req) {
  int limit;
  const char *cursor;
  if (http_req_page(req, &limit, &cursor) < 0) return 0;
  if (limit > EVENTS_MAX) limit = EVENTS_MAX;
  const char *type = http_req_query(req, "type");
  const char *subject = http_req_query(req, "subject");
  json_t *items;
  int rc = console_events_recent(http_req_app(req), type && *type ? type : NULL,
                                 subject && *subject ? subject : NULL, limit, &items);
  if (rc == -ERR_VALIDATION_FAILED)
    return http_reply_problem(
        req, rc, "type filter too long",
        json_pack("[{s:s,s:s}]", "field", "type", "message", "at most 90 characters"));
  if (rc < 0) return rc;
  return http_reply_json(req, 200, json_pack("{s:o,s:n}", "items", items, "next_cursor"));
}

int api_console_stream(http_req_t *req) {
  char sid[CONSOLE_SECRET_LEN + 1];
  if (!cookie_sid(req, sid)) return -ERR_UNAUTHENTICATED;
  return api_stream_all_events(req, sid);
}
