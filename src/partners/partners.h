/* The one client for all four partners (CONTRACT section 6): base URL, timeout,
 * optional proxy per partner, JSON in and out, and a verdict that handlers map
 * to outcomes. Handlers never talk HTTP themselves. */
#ifndef IOTFIN_PARTNERS_PARTNERS_H
#define IOTFIN_PARTNERS_PARTNERS_H

#include <jansson.h>
#include <stdbool.h>

#include "app.h"
#include "core/config.h"

typedef enum {
  PARTNER_OK,       /* 2xx */
  PARTNER_REFUSED,  /* 4xx: permanent, do not retry the same call */
  PARTNER_TRANSIENT /* 5xx, timeout, refused connection: try again later */
} partner_verdict_t;

typedef struct {
  partner_verdict_t verdict;
  long status;     /* HTTP status, 0 when no answer came */
  json_t *body;    /* parsed JSON answer or NULL; owned, free with partner_result_free */
  char error[256]; /* why, for logs and last_error; never holds secrets */
} partner_result_t;

/* Calls partner p with method and path (appended to its base URL), sending body
 * (borrowed, may be NULL) as content_type (NULL: application/json). timeout_ms <= 0
 * uses the partner's setting. Always fills *out; returns 0. Any thread. */
int partner_call(const app_t *app, partner_id_t p, const char *method, const char *path,
                 json_t *body, const char *content_type, long timeout_ms, partner_result_t *out);
void partner_result_free(partner_result_t *r);

/* When url is iotfin's own (the mock, reached over HTTPS), makes the curl handle trust
 * our own certificate. Otherwise does nothing. Any thread. */
void partner_trust_self(void *curl, const app_t *app, const char *url);
/* The partner's base URL: its setting, else the built-in mock while it is on. */
void partner_base_url(const app_t *app, partner_id_t p, char *out, size_t cap);

/* Checks `Iotfin-Signature: t=<unix>,v1=<hex>` over "<t>.<body>" with secret,
 * accepting |now - t| <= 300 s. Returns true when valid. */
bool partner_signature_valid(const char *secret, const char *header, const char *body, size_t len,
                             long long now_s);
/* Writes the header value for body at time t into out (for the mock's callbacks). */
void partner_signature_make(const char *secret, const char *body, size_t len, long long t,
                            char *out, size_t cap);

#endif
