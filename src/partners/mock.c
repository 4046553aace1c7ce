/* The partner mock. Overrides and the request log live in memory (a test fixture
 * sets them through the control API); answer files are read on every call so that
 * edits apply at once. A delayed answer waits on the gateway's timer, not on a
 * thread (http_reply_delay). Callbacks wait on one scheduler thread
 * ("mock-callbacks") and are POSTed, signed with the partner's secret, to iotfin's
 * own HTTP address, counting from when the answer goes out. */
#include "partners/mock.h"

#include <ctype.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"
#include "core/errors.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "partners/partners.h"

#define MAX_LOG 10000
/* The log's bound in bytes (its entries as JSON), beside its bound in entries; a body
 * above LOG_BODY_MAX is kept as its first LOG_BODY_MAX bytes. */
#define MAX_LOG_BYTES (16u * 1024u * 1024u)
#define LOG_BODY_MAX 8192
#define MAX_DELAY_MS 30000
#define REDACTED "[redacted]"

typedef struct override {
  char partner[32], method[16], path[512];
  int status;
  json_t *headers, *body, *callback;
  long delay_ms;
  int times; /* < 0: unlimited */
  struct override *next;
} override_t;

typedef struct callback {
  int64_t due_ms;
  char partner[32], path[512];
  char *body;
  struct callback *next;
} callback_t;

struct partner_mock {
  app_t *app;
  /* lock guards overrides, log, callbacks and stopping; cond wakes the scheduler. */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  override_t *overrides; /* newest first */
  json_t *log;           /* array of received calls, oldest first */
  size_t *log_sizes;     /* ring of MAX_LOG entry sizes, parallel to log */
  size_t log_head, log_bytes;
  callback_t *callbacks; /* sorted by due_ms */
  bool stopping;
  pthread_t thread;
};

/* The running mock; the route handlers reach it through this (one per process). */
static partner_mock_t *the_mock;

/* --- templating ----------------------------------------------------------- */

static json_t *lookup(const char *expr, json_t *request, json_t *response) {
  json_t *root = NULL;
  if (strncmp(expr, "request.body.", 13) == 0) {
    root = request;
    expr += 13;
  } else if (strncmp(expr, "response.body.", 14) == 0) {
    root = response;
    expr += 14;
  } else {
    return NULL;
  }
  char buf[256];
  snprintf(buf, sizeof(buf), "%s", expr);
  json_t *cur = root;
  for (char *save, *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save))
    cur = json_object_get(cur, tok);
  return cur;
}

static json_t *fill_string(const char *s, json_t *request, json_t *response) {
  size_t n = strlen(s);
  /* A string that is one placeholder takes the value itself, numbers included. */
  if (n > 4 && strncmp(s, "{{", 2) == 0 && strcmp(s + n - 2, "}}") == 0 && !strstr(s + 2, "{{")) {
    char expr[256];
    snprintf(expr, sizeof(expr), "%.*s", (int)(n - 4), s + 2);
    if (strcmp(expr, "uuid") == 0) {
      char id[IDS_UUID_LEN];
      ids_uuid7(id);
      return json_string(id);
    }
    json_t *v = lookup(expr, request, response);
    if (v) return json_deep_copy(v);
  }
  size_t cap = n + 256, len = 0;
  char *out = malloc(cap);
  for (const char *p = s; *p;) {
    const char *open = strstr(p, "{{"), *close = open ? strstr(open, "}}") : NULL;
    size_t lit = open && close ? (size_t)(open - p) : strlen(p);
    char val[512] = "";
    if (open && close) {
      char expr[256];
      snprintf(expr, sizeof(expr), "%.*s", (int)(close - open - 2), open + 2);
      if (strcmp(expr, "uuid") == 0) {
        ids_uuid7(val);
      } else {
        json_t *v = lookup(expr, request, response);
        if (json_is_string(v))
          snprintf(val, sizeof(val), "%s", json_string_value(v));
        else if (v) {
          char *d = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
          snprintf(val, sizeof(val), "%s", d ? d : "");
          free(d);
        }
      }
    }
    size_t need = len + lit + strlen(val) + 1;
    if (need > cap) {
      cap = need * 2;
      out = realloc(out, cap);
    }
    memcpy(out + len, p, lit);
    len += lit;
    memcpy(out + len, val, strlen(val));
    len += strlen(val);
    p = open && close ? close + 2 : p + lit;
  }
  out[len] = 0;
  json_t *r = json_string(out);
  free(out);
  return r ? r : json_string("");
}

json_t *partner_mock_fill(json_t *v, json_t *request, json_t *response) {
  if (json_is_string(v)) return fill_string(json_string_value(v), request, response);
  if (json_is_object(v)) {
    json_t *o = json_object();
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) json_object_set_new(o, k, partner_mock_fill(x, request, response));
    return o;
  }
  if (json_is_array(v)) {
    json_t *a = json_array();
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) json_array_append_new(a, partner_mock_fill(x, request, response));
    return a;
  }
  return v ? json_deep_copy(v) : NULL;
}

/* --- answer sources ------------------------------------------------------- */

/* A URL segment may name a file or folder under the mock folder: not empty, no
 * "." or ".." (nor any hidden name), and no "/" (a partner name is one segment). */
static bool segment_safe(const char *seg) { return seg[0] && seg[0] != '.' && !strchr(seg, '/'); }

/* The method names the file (GET.json), so it must be a plain word. */
static bool method_safe(const char *m) {
  size_t n = strlen(m);
  if (n == 0 || n > 15) return false;
  for (; *m; m++)
    if (!isalpha((unsigned char)*m)) return false;
  return true;
}

static json_t *find_in(const char *dir, char **segs, int i, int n, const char *method) {
  char path[2048];
  if (i == n) {
    char up[16];
    size_t k;
    for (k = 0; k < sizeof(up) - 1 && method[k]; k++)
      up[k] = (char)toupper((unsigned char)method[k]);
    up[k] = 0;
    snprintf(path, sizeof(path), "%s/%s.json", dir, up);
    if (access(path, R_OK) != 0) return NULL;
    json_error_t err;
    json_t *f = json_load_file(path, 0, &err);
    if (!f) log_warn("mock", "%s is not valid JSON: %s (line %d)", path, err.text, err.line);
    return f;
  }
  /* Only existing folders are searched: otherwise trying each segment and "_" at
   * every level costs 2^segments lookups, hours of one thread for a 32-segment URL. */
  if (!segment_safe(segs[i]) || access(dir, X_OK) != 0) return NULL;
  snprintf(path, sizeof(path), "%s/%s", dir, segs[i]);
  json_t *f = find_in(path, segs, i + 1, n, method);
  if (f) return f;
  snprintf(path, sizeof(path), "%s/_", dir);
  return find_in(path, segs, i + 1, n, method);
}

json_t *partner_mock_find_file(const char *dir, const char *partner, const char *path,
                               const char *method) {
  if (!segment_safe(partner) || !method_safe(method)) return NULL;
  char buf[1024], base[1400];
  snprintf(buf, sizeof(buf), "%s", path);
  char *segs[32];
  int n = 0;
  for (char *save, *t = strtok_r(buf, "/", &save); t && n < 32; t = strtok_r(NULL, "/", &save))
    segs[n++] = t;
  snprintf(base, sizeof(base), "%s/%s", dir, partner);
  return find_in(base, segs, 0, n, method);
}

static bool template_matches(const char *tpl, const char *path) {
  while (*tpl && *path) {
    if (*tpl == '{') {
      const char *e = strchr(tpl, '}');
      if (!e) return false;
      const char *slash = strchr(path, '/');
      if (slash == path) return false;
      path = slash ? slash : path + strlen(path);
      tpl = e + 1;
    } else if (*tpl++ != *path++) {
      return false;
    }
  }
  return *tpl == 0 && *path == 0;
}

json_t *partner_mock_openapi_example(json_t *openapi, const char *path, const char *method) {
  json_t *paths = json_object_get(openapi, "paths");
  const char *tpl;
  json_t *item;
  char m[16];
  size_t k;
  for (k = 0; k < sizeof(m) - 1 && method[k]; k++)
    m[k] = (char)tolower((unsigned char)method[k]);
  m[k] = 0;
  json_object_foreach(paths, tpl, item) {
    if (!template_matches(tpl, path)) continue;
    json_t *responses = json_object_get(json_object_get(item, m), "responses");
    int best = 0;
    json_t *best_body = NULL;
    const char *code;
    json_t *resp;
    json_object_foreach(responses, code, resp) {
      int st = atoi(code);
      if (st < 200 || st > 299 || (best && st >= best)) continue;
      json_t *media = json_object_get(json_object_get(resp, "content"), "application/json");
      json_t *ex = json_object_get(media, "example");
      if (!ex) {
        const char *name;
        json_t *e;
        json_object_foreach(json_object_get(media, "examples"), name, e) {
          ex = json_object_get(e, "value");
          if (ex) break;
        }
      }
      best = st;
      best_body = ex;
    }
    if (best) return json_pack("{s:i,s:O?}", "status", best, "body", best_body);
  }
  return NULL;
}

static bool override_matches(const override_t *o, const char *partner, const char *method,
                             const char *path) {
  return strcmp(o->partner, partner) == 0 && strcasecmp(o->method, method) == 0 &&
         template_matches(o->path, path);
}

/* Caller must hold mock->lock. Returns the answer as a file-shaped object. */
static json_t *take_override(partner_mock_t *mk, const char *partner, const char *method,
                             const char *path) {
  override_t **pp = &mk->overrides;
  for (override_t *o = *pp; o; pp = &o->next, o = o->next) {
    if (!override_matches(o, partner, method, path)) continue;
    json_t *ans =
        json_pack("{s:i,s:O?,s:O?,s:I,s:O?}", "status", o->status, "headers", o->headers, "body",
                  o->body, "delay_ms", (json_int_t)o->delay_ms, "callback", o->callback);
    if (o->times > 0 && --o->times == 0) {
      *pp = o->next;
      json_decref(o->headers);
      json_decref(o->body);
      json_decref(o->callback);
      free(o);
    }
    return ans;
  }
  return NULL;
}

/* --- callbacks ------------------------------------------------------------- */

static void schedule(partner_mock_t *mk, const char *partner, const char *path, json_t *body,
                     long delay_ms) {
  callback_t *c = calloc(1, sizeof(*c));
  c->due_ms = time_mono_ms() + (delay_ms > 0 ? delay_ms : 0);
  snprintf(c->partner, sizeof(c->partner), "%s", partner);
  snprintf(c->path, sizeof(c->path), "%s", path);
  c->body = json_dumps(body, JSON_COMPACT);
  pthread_mutex_lock(&mk->lock);
  callback_t **pp = &mk->callbacks;
  while (*pp && (*pp)->due_ms <= c->due_ms)
    pp = &(*pp)->next;
  c->next = *pp;
  *pp = c;
  pthread_cond_signal(&mk->cond);
  pthread_mutex_unlock(&mk->lock);
}

static void deliver(partner_mock_t *mk, callback_t *c) {
  int p = config_partner_by_name(c->partner);
  const char *secret = p >= 0 ? mk->app->cfg->partners[p].secret : "";
  char url[1200], sig[200], hdr[240];
  snprintf(url, sizeof(url), "%s%s", mk->app->http_url, c->path);
  partner_signature_make(secret, c->body, strlen(c->body), time_now_ms() / 1000, sig, sizeof(sig));
  snprintf(hdr, sizeof(hdr), "Iotfin-Signature: %s", sig);
  CURL *h = curl_easy_init();
  if (!h) return;
  struct curl_slist *hs = curl_slist_append(NULL, "Content-Type: application/json");
  hs = curl_slist_append(hs, hdr);
  curl_easy_setopt(h, CURLOPT_URL, url);
  partner_trust_self(h, mk->app, url);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hs);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->body);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  CURLcode cc = curl_easy_perform(h);
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  if (cc != CURLE_OK || status >= 300)
    log_warn("mock", "callback %s for %s failed: %s, status %ld", c->path, c->partner,
             curl_easy_strerror(cc), status);
  else
    log_info("mock", "callback %s for %s delivered (%ld)", c->path, c->partner, status);
  curl_slist_free_all(hs);
  curl_easy_cleanup(h);
}

static void *scheduler_main(void *arg) {
  partner_mock_t *mk = arg;
  pthread_setname_np(pthread_self(), "mock-callbacks");
  pthread_mutex_lock(&mk->lock);
  while (!mk->stopping) {
    callback_t *c = mk->callbacks;
    int64_t now = time_mono_ms();
    if (c && c->due_ms <= now) {
      mk->callbacks = c->next;
      pthread_mutex_unlock(&mk->lock);
      deliver(mk, c);
      free(c->body);
      free(c);
      pthread_mutex_lock(&mk->lock);
      continue;
    }
    struct timespec ts;
    time_deadline(c ? c->due_ms - now : 1000, &ts);
    pthread_cond_timedwait(&mk->cond, &mk->lock, &ts);
  }
  pthread_mutex_unlock(&mk->lock);
  return NULL;
}

int partner_mock_start(app_t *app, partner_mock_t **out) {
  partner_mock_t *mk = calloc(1, sizeof(*mk));
  if (!mk) return -ERR_INTERNAL;
  mk->app = app;
  mk->log = json_array();
  mk->log_sizes = calloc(MAX_LOG, sizeof(*mk->log_sizes));
  if (!mk->log_sizes) {
    json_decref(mk->log);
    free(mk);
    return -ERR_INTERNAL;
  }
  pthread_mutex_init(&mk->lock, NULL);
  pthread_cond_init(&mk->cond, NULL);
  if (pthread_create(&mk->thread, NULL, scheduler_main, mk) != 0) {
    json_decref(mk->log);
    free(mk->log_sizes);
    free(mk);
    return -ERR_INTERNAL;
  }
  the_mock = mk;
  *out = mk;
  return 0;
}

static void clear_overrides(partner_mock_t *mk) {
  for (override_t *o = mk->overrides, *n; o; o = n) {
    n = o->next;
    json_decref(o->headers);
    json_decref(o->body);
    json_decref(o->callback);
    free(o);
  }
  mk->overrides = NULL;
}

void partner_mock_stop(partner_mock_t **pmk) {
  partner_mock_t *mk = *pmk;
  if (!mk) return;
  pthread_mutex_lock(&mk->lock);
  mk->stopping = true;
  pthread_cond_signal(&mk->cond);
  pthread_mutex_unlock(&mk->lock);
  pthread_join(mk->thread, NULL);
  the_mock = NULL;
  clear_overrides(mk);
  for (callback_t *c = mk->callbacks, *n; c; c = n) {
    n = c->next;
    free(c->body);
    free(c);
  }
  json_decref(mk->log);
  free(mk->log_sizes);
  pthread_mutex_destroy(&mk->lock);
  pthread_cond_destroy(&mk->cond);
  free(mk);
  *pmk = NULL;
}

/* --- request log: redacted and bounded -------------------------------------- */

/* Names whose values are secrets wherever they appear: a header, or a body field at
 * any depth (partner users' passwords pass through IDENTITY calls). */
static bool secret_name(const char *name) {
  static const char *parts[] = {"password",      "passwd",     "secret",   "token",
                                "authorization", "cookie",     "api_key",  "apikey",
                                "api-key",       "credential", "signature"};
  for (size_t k = 0; k < sizeof(parts) / sizeof(parts[0]); k++)
    if (strcasestr(name, parts[k])) return true;
  return false;
}

/* Replaces, in place, the value of every secret-named field of v (any depth). */
static void redact(json_t *v) {
  if (json_is_object(v)) {
    const char *k;
    json_t *x;
    void *tmp;
    json_object_foreach_safe(v, tmp, k, x) {
      if (secret_name(k))
        json_object_set_new(v, k, json_string(REDACTED));
      else
        redact(x);
    }
  } else if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) redact(x);
  }
}

/* The body as the log keeps it: redacted JSON, or the raw text; above LOG_BODY_MAX,
 * a string of its first bytes (never cut inside a UTF-8 character). */
static json_t *log_body(json_t *parsed, const char *raw, size_t len, bool *truncated) {
  *truncated = false;
  if (!parsed && !len) return json_null();
  json_t *b = parsed ? json_deep_copy(parsed) : NULL;
  if (b) redact(b);
  char *text = b ? json_dumps(b, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  const char *src = text ? text : raw;
  size_t n = text ? strlen(text) : len;
  if (n <= LOG_BODY_MAX && b) {
    free(text);
    return b;
  }
  json_decref(b);
  if (!text && len) {
    /* Raw text may carry password=... form fields; only what is JSON is redacted
     * field by field, so anything else naming a secret is withheld. */
    char probe[LOG_BODY_MAX + 1];
    size_t pn = len < LOG_BODY_MAX ? len : LOG_BODY_MAX;
    memcpy(probe, raw, pn);
    probe[pn] = 0;
    if (secret_name(probe)) return json_string(REDACTED);
  }
  if (n > LOG_BODY_MAX) {
    *truncated = true;
    n = LOG_BODY_MAX;
    while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
      n--;
  }
  json_t *out = json_stringn(src, n);
  free(text);
  return out ? out : json_string("(not UTF-8)");
}

static json_t *log_headers(http_req_t *req) {
  json_t *h = http_req_headers(req);
  const char *k;
  json_t *v;
  json_object_foreach(h, k, v) {
    if (secret_name(k)) json_object_set_new(h, k, json_string(REDACTED));
  }
  return h;
}

/* Caller must hold mk->lock. Appends entry (stolen), dropping the oldest entries
 * until both bounds hold. */
static void log_append(partner_mock_t *mk, json_t *entry) {
  char *d = json_dumps(entry, JSON_COMPACT);
  size_t size = d ? strlen(d) : 0;
  free(d);
  size_t n = json_array_size(mk->log);
  while (n && (n >= MAX_LOG || mk->log_bytes + size > MAX_LOG_BYTES)) {
    json_array_remove(mk->log, 0);
    mk->log_bytes -= mk->log_sizes[mk->log_head];
    mk->log_head = (mk->log_head + 1) % MAX_LOG;
    n--;
  }
  mk->log_sizes[(mk->log_head + n) % MAX_LOG] = size;
  mk->log_bytes += size;
  json_array_append_new(mk->log, entry);
}

static void log_clear(partner_mock_t *mk) {
  json_array_clear(mk->log);
  mk->log_head = mk->log_bytes = 0;
}

/* Headers an answer may carry. The mock answers on iotfin's own origin, so nothing
 * that sets state in a browser, redirects, or changes how the connection or the
 * content is handled: a short list, plus X-* application headers. */
static bool header_allowed(const char *name, const char *value) {
  static const char *safe[] = {"content-type", "content-language", "retry-after", "etag",
                               "last-modified"};
  static const char *unsafe_x[] = {"x-frame-options",
                                   "x-content-type-options",
                                   "x-xss-protection",
                                   "x-forwarded-",
                                   "x-real-ip",
                                   "x-accel-",
                                   "x-sendfile",
                                   "x-powered-by",
                                   "x-request-id",
                                   "x-permitted-cross-domain-policies",
                                   "x-dns-prefetch-control",
                                   "x-download-options"};
  if (!name[0] || strlen(name) > 64 || (value && strpbrk(value, "\r\n"))) return false;
  for (const char *c = name; *c; c++)
    if (!isalnum((unsigned char)*c) && *c != '-') return false;
  for (size_t i = 0; i < sizeof(safe) / sizeof(safe[0]); i++)
    if (strcasecmp(name, safe[i]) == 0) return true;
  if (strncasecmp(name, "x-", 2) != 0) return false;
  for (size_t i = 0; i < sizeof(unsafe_x) / sizeof(unsafe_x[0]); i++)
    if (strncasecmp(name, unsafe_x[i], strlen(unsafe_x[i])) == 0) return false;
  return true;
}

/* --- routes ----------------------------------------------------------------- */

bool api_mock_enabled(const app_t *app) { return app->cfg->mock && the_mock != NULL; }

static int mock_off(http_req_t *req) {
  return http_reply_problem(req, ERR_NOT_FOUND, "the partner mock is off (IOTFIN_MOCK=off)", NULL);
}

int api_mock_any(http_req_t *req) {
  partner_mock_t *mk = the_mock;
  app_t *app = http_req_app(req);
  if (!mk || !app->cfg->mock) return mock_off(req);
  const char *partner = http_req_param(req, "partner");
  char path[600];
  snprintf(path, sizeof(path), "/%s", http_req_param(req, "path"));
  const char *method = http_req_method(req);
  if (config_partner_by_name(partner) < 0)
    return http_reply_problem(req, ERR_NOT_FOUND, "no such partner", NULL);

  size_t len;
  const char *raw = http_req_body(req, &len);
  json_t *reqbody = len ? json_loadb(raw, len, 0, NULL) : NULL;
  char ts[32];
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  bool truncated;
  json_t *entry = json_pack("{s:s,s:s,s:s,s:o,s:o*,s:s}", "partner", partner, "method", method,
                            "path", path, "headers", log_headers(req), "body",
                            log_body(reqbody, raw, len, &truncated), "received_at", ts);
  if (entry && truncated) json_object_set_new(entry, "body_truncated", json_true());

  pthread_mutex_lock(&mk->lock);
  if (entry) log_append(mk, entry);
  json_t *ans = take_override(mk, partner, method, path);
  pthread_mutex_unlock(&mk->lock);

  if (!ans) ans = partner_mock_find_file(app->cfg->mock_dir, partner, path + 1, method);
  if (!ans) {
    char oa[1400];
    snprintf(oa, sizeof(oa), "%s/%s/openapi.json", app->cfg->mock_dir, partner);
    json_t *doc = json_load_file(oa, 0, NULL);
    if (doc) ans = partner_mock_openapi_example(doc, path, method);
    json_decref(doc);
  }
  if (!ans) {
    json_decref(reqbody);
    return http_reply_problem(req, ERR_NOT_FOUND, "the mock has no answer for this call", NULL);
  }
  long delay = (long)json_integer_value(json_object_get(ans, "delay_ms"));
  if (delay > MAX_DELAY_MS) delay = MAX_DELAY_MS;
  if (delay < 0) delay = 0;
  /* The gateway holds the answer on its timer: no thread sleeps through it. */
  if (delay > 0) http_reply_delay(req, delay);
  json_t *body = partner_mock_fill(json_object_get(ans, "body"), reqbody, NULL);
  json_t *cb = json_object_get(ans, "callback");
  if (json_is_object(cb)) {
    const char *cpath = json_string_value(json_object_get(cb, "path"));
    json_t *cbody = partner_mock_fill(json_object_get(cb, "body"), reqbody, body);
    if (cpath && cpath[0] == '/')
      schedule(mk, partner, cpath, cbody ? cbody : json_object(),
               delay + (long)json_integer_value(json_object_get(cb, "delay_ms")));
    json_decref(cbody);
  }
  const char *k;
  json_t *v;
  json_object_foreach(json_object_get(ans, "headers"), k, v) {
    if (!json_is_string(v)) continue;
    if (header_allowed(k, json_string_value(v)))
      http_reply_header(req, k, json_string_value(v));
    else
      log_warn("mock", "left out header %.64s of a %s answer: not one a mock may set", k, partner);
  }
  int status = (int)json_integer_value(json_object_get(ans, "status"));
  if (status < 100 || status > 599) status = 200;
  json_decref(ans);
  json_decref(reqbody);
  if (!body || json_is_null(body)) {
    json_decref(body);
    return http_reply_text(req, status, "application/json", "");
  }
  return http_reply_json(req, status, body);
}

static const http_field_t override_fields[] = {
    {.name = "partner",
     .type = HTTP_T_STRING,
     .required = true,
     .enum_values = "kyc|identity|supplier|bank"},
    {.name = "method",
     .type = HTTP_T_STRING,
     .required = true,
     .enum_values = "GET|POST|PUT|PATCH|DELETE"},
    {.name = "path",
     .type = HTTP_T_STRING,
     .required = true,
     .min = 1,
     .max = 500,
     .description = "with a leading slash; {param} segments match any value"},
    {.name = "status", .type = HTTP_T_INT, .required = true, .min = 100, .max = 599},
    {.name = "headers", .type = HTTP_T_OBJECT},
    {.name = "body", .type = HTTP_T_OBJECT, .description = "JSON answer body"},
    {.name = "delay_ms", .type = HTTP_T_INT, .min = 0, .max = MAX_DELAY_MS},
    {.name = "callback", .type = HTTP_T_OBJECT, .description = "{delay_ms, path, body}"},
    {.name = "times",
     .type = HTTP_T_INT,
     .min = 1,
     .max = 1000000,
     .description = "answer this many calls, then fall back; unlimited when left out"},
    {0},
};
const http_body_t api_mock_override_body = {override_fields, false, false};

int api_mock_put_response(http_req_t *req) {
  partner_mock_t *mk = the_mock;
  if (!mk || !http_req_app(req)->cfg->mock) return mock_off(req);
  json_t *b = http_req_json(req);
  const char *path = json_string_value(json_object_get(b, "path"));
  const char *hk;
  json_t *hv;
  json_t *bad = NULL;
  json_object_foreach(json_object_get(b, "headers"), hk, hv) {
    if (json_is_string(hv) && header_allowed(hk, json_string_value(hv))) continue;
    if (!bad) bad = json_array();
    char field[96];
    snprintf(field, sizeof(field), "headers.%.80s", hk);
    json_array_append_new(bad, json_pack("{s:s,s:s}", "field", field, "message",
                                         "not a header a mock may set (allowed: Content-Type, "
                                         "Content-Language, Retry-After, ETag, Last-Modified, "
                                         "X-*); values are strings of one line"));
  }
  if (bad) return http_reply_problem(req, ERR_VALIDATION_FAILED, "headers a mock may not set", bad);
  if (path[0] != '/')
    return http_reply_problem(
        req, ERR_VALIDATION_FAILED, "path needs a leading slash",
        json_pack("[{s:s,s:s}]", "field", "path", "message", "must start with /"));
  override_t *o = calloc(1, sizeof(*o));
  snprintf(o->partner, sizeof(o->partner), "%s", json_string_value(json_object_get(b, "partner")));
  snprintf(o->method, sizeof(o->method), "%s", json_string_value(json_object_get(b, "method")));
  snprintf(o->path, sizeof(o->path), "%s", path);
  o->status = (int)json_integer_value(json_object_get(b, "status"));
  o->headers = json_incref(json_object_get(b, "headers"));
  o->body = json_incref(json_object_get(b, "body"));
  o->callback = json_incref(json_object_get(b, "callback"));
  o->delay_ms = (long)json_integer_value(json_object_get(b, "delay_ms"));
  o->times =
      json_object_get(b, "times") ? (int)json_integer_value(json_object_get(b, "times")) : -1;
  pthread_mutex_lock(&mk->lock);
  o->next = mk->overrides;
  mk->overrides = o;
  pthread_mutex_unlock(&mk->lock);
  return http_reply_json(req, 201, json_deep_copy(b));
}

int api_mock_delete_responses(http_req_t *req) {
  partner_mock_t *mk = the_mock;
  if (!mk || !http_req_app(req)->cfg->mock) return mock_off(req);
  pthread_mutex_lock(&mk->lock);
  clear_overrides(mk);
  pthread_mutex_unlock(&mk->lock);
  return http_reply_text(req, 204, "application/json", "");
}

int api_mock_get_requests(http_req_t *req) {
  partner_mock_t *mk = the_mock;
  if (!mk || !http_req_app(req)->cfg->mock) return mock_off(req);
  const char *partner = http_req_query(req, "partner");
  json_t *items = json_array();
  pthread_mutex_lock(&mk->lock);
  size_t i;
  json_t *e;
  json_array_foreach(mk->log, i, e) {
    if (partner && *partner &&
        strcmp(json_string_value(json_object_get(e, "partner")), partner) != 0)
      continue;
    json_array_append_new(items, json_deep_copy(e));
  }
  pthread_mutex_unlock(&mk->lock);
  return http_reply_json(req, 200, json_pack("{s:o}", "items", items));
}

int api_mock_delete_requests(http_req_t *req) {
  partner_mock_t *mk = the_mock;
  if (!mk || !http_req_app(req)->cfg->mock) return mock_off(req);
  pthread_mutex_lock(&mk->lock);
  log_clear(mk);
  pthread_mutex_unlock(&mk->lock);
  return http_reply_text(req, 204, "application/json", "");
}
