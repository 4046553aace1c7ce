/* libcurl-based partner calls: one easy handle per calling thread, kept between its
 * calls so that calls to one partner reuse a kept-alive connection (see
 * thread_handle); results are sorted into verdicts the callers retry or give up on. */
#include "partners/partners.h"

#include <curl/curl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jsontext.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"

typedef struct {
  char *data;
  size_t len;
} buf_t;

static size_t write_cb(char *ptr, size_t size, size_t n, void *arg) {
  buf_t *b = arg;
  size_t add = size * n;
  if (b->len + add > 1024 * 1024) return 0; /* a partner answer has no business being larger */
  char *nd = realloc(b->data, b->len + add + 1);
  if (!nd) return 0;
  memcpy(nd + b->len, ptr, add);
  b->data = nd;
  b->len += add;
  b->data[b->len] = 0;
  return add;
}

void partner_base_url(const app_t *app, partner_id_t p, char *out, size_t cap) {
  const config_partner_t *cp = &app->cfg->partners[p];
  if (cp->url[0])
    snprintf(out, cap, "%s", cp->url);
  else if (app->cfg->mock)
    snprintf(out, cap, "%s/mock/%s", app->http_url, config_partner_name(p));
  else
    out[0] = 0;
}

void partner_trust_self(void *curl, const app_t *app, const char *url) {
  size_t n = strlen(app->http_url);
  if (!app->cfg->tls_cert[0] || !n || strncmp(url, app->http_url, n) != 0) return;
  /* A call to ourselves (the mock): trust exactly our own certificate. The name is not
   * checked, since the listen address need not be one the certificate names. */
  curl_easy_setopt(curl, CURLOPT_CAINFO, app->cfg->tls_cert);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
}

/* One curl handle per calling thread, kept between calls: curl_easy_reset() clears the
 * options but keeps the connection cache, so calls to one partner reuse a kept-alive
 * connection (and its TLS session) instead of a new TCP handshake and a TIME-WAIT
 * socket each. Freed when the thread ends. */
static pthread_key_t handle_key;
static pthread_once_t handle_once = PTHREAD_ONCE_INIT;
static void handle_free(void *h) { curl_easy_cleanup(h); }
static void handle_key_init(void) { pthread_key_create(&handle_key, handle_free); }

static CURL *thread_handle(void) {
  pthread_once(&handle_once, handle_key_init);
  CURL *c = pthread_getspecific(handle_key);
  if (c) {
    curl_easy_reset(c);
    return c;
  }
  c = curl_easy_init();
  if (c && pthread_setspecific(handle_key, c) != 0) {
    curl_easy_cleanup(c);
    c = NULL;
  }
  return c;
}

static pthread_once_t describe_once = PTHREAD_ONCE_INIT;
static void describe(void) {
  metrics_describe("iotfin_partner_calls_total", "counter", "Partner calls by partner and status.");
  metrics_describe("iotfin_partner_call_duration_seconds", "histogram",
                   "Partner call latency by partner.");
}

int partner_call(const app_t *app, partner_id_t p, const char *method, const char *path,
                 json_t *body, const char *content_type, long timeout_ms, partner_result_t *out) {
  pthread_once(&describe_once, describe);
  memset(out, 0, sizeof(*out));
  const config_partner_t *cp = &app->cfg->partners[p];
  const char *pname = config_partner_name(p);
  char base[600], url[1200];
  partner_base_url(app, p, base, sizeof(base));
  if (!base[0]) {
    out->verdict = PARTNER_TRANSIENT;
    snprintf(out->error, sizeof(out->error), "%s: no URL configured (IOTFIN_PARTNER_%s_URL)", pname,
             config_partner_env_name(p));
    return 0;
  }
  size_t bl = strlen(base);
  if (bl && base[bl - 1] == '/') base[bl - 1] = 0;
  snprintf(url, sizeof(url), "%s%s", base, path);

  CURL *c = thread_handle();
  if (!c) {
    out->verdict = PARTNER_TRANSIENT;
    snprintf(out->error, sizeof(out->error), "%s: out of memory", pname);
    return 0;
  }
  char *payload = body ? json_text(body, NULL) : NULL;
  char ct[128];
  snprintf(ct, sizeof(ct), "Content-Type: %s", content_type ? content_type : "application/json");
  struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
  if (payload) hdrs = curl_slist_append(hdrs, ct);
  buf_t resp = {NULL, 0};
  curl_easy_setopt(c, CURLOPT_URL, url);
  partner_trust_self(c, app, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  if (payload) curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : cp->timeout_ms);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  /* An explicit empty proxy keeps http_proxy from the environment out of the way. */
  curl_easy_setopt(c, CURLOPT_PROXY, cp->proxy[0] ? cp->proxy : "");
  int64_t t0 = time_mono_ms();
  CURLcode cc = curl_easy_perform(c);
  double secs = (double)(time_mono_ms() - t0) / 1000.0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
  if (cc != CURLE_OK) {
    out->status = 0;
    out->verdict = PARTNER_TRANSIENT;
    snprintf(out->error, sizeof(out->error), "%s %s %s: %s", pname, method, path,
             curl_easy_strerror(cc));
  } else {
    if (resp.data) out->body = json_loadb(resp.data, resp.len, 0, NULL);
    if (out->status >= 200 && out->status < 300) {
      out->verdict = PARTNER_OK;
    } else {
      out->verdict = out->status >= 400 && out->status < 500 ? PARTNER_REFUSED : PARTNER_TRANSIENT;
      snprintf(out->error, sizeof(out->error), "%s %s %s answered %ld", pname, method, path,
               out->status);
    }
  }
  char labels[128];
  snprintf(labels, sizeof(labels), "partner=\"%s\",status=\"%ld\"", pname, out->status);
  metrics_counter_add("iotfin_partner_calls_total", labels, 1);
  snprintf(labels, sizeof(labels), "partner=\"%s\"", pname);
  metrics_histogram_observe("iotfin_partner_call_duration_seconds", labels, secs);
  log_debug("partners", "%s %s %s -> %ld in %.1f ms", pname, method, path, out->status,
            secs * 1000);
  curl_slist_free_all(hdrs);
  free(payload);
  free(resp.data);
  return 0;
}

void partner_result_free(partner_result_t *r) {
  json_decref(r->body);
  r->body = NULL;
}

static void hmac_hex(const char *secret, long long t, const char *body, size_t len, char hex[65]) {
  crypto_auth_hmacsha256_state st;
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  char ts[32];
  int tl = snprintf(ts, sizeof(ts), "%lld.", t);
  crypto_auth_hmacsha256_init(&st, (const unsigned char *)secret, strlen(secret));
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)ts, (unsigned long long)tl);
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)body, len);
  crypto_auth_hmacsha256_final(&st, mac);
  sodium_bin2hex(hex, 65, mac, sizeof(mac));
}

void partner_signature_make(const char *secret, const char *body, size_t len, long long t,
                            char *out, size_t cap) {
  char hex[65];
  hmac_hex(secret, t, body, len, hex);
  snprintf(out, cap, "t=%lld,v1=%s", t, hex);
}

bool partner_signature_valid(const char *secret, const char *header, const char *body, size_t len,
                             long long now_s) {
  if (!secret || !secret[0] || !header) return false;
  long long t = -1;
  const char *v1 = NULL;
  size_t v1len = 0;
  for (const char *p = header; p && *p;) {
    while (*p == ' ')
      p++;
    const char *comma = strchr(p, ',');
    size_t l = comma ? (size_t)(comma - p) : strlen(p);
    if (l > 2 && strncmp(p, "t=", 2) == 0) {
      char num[24];
      size_t nl = l - 2 < sizeof(num) - 1 ? l - 2 : sizeof(num) - 1;
      memcpy(num, p + 2, nl);
      num[nl] = 0;
      char *end;
      t = strtoll(num, &end, 10);
      if (*end) t = -1;
    } else if (l > 3 && strncmp(p, "v1=", 3) == 0) {
      v1 = p + 3;
      v1len = l - 3;
    }
    p = comma ? comma + 1 : NULL;
  }
  if (t < 0 || !v1 || v1len != 64) return false;
  if (now_s - t > 300 || t - now_s > 300) return false;
  char want[65];
  hmac_hex(secret, t, body, len, want);
  return sodium_memcmp(want, v1, 64) == 0;
}
