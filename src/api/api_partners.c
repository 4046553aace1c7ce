/* POST /v1/partners/{name}/webhooks: partner callbacks, signed with HMAC-SHA256
 * over "<t>.<raw body>" (CONTRACT section 6). The signature is checked on the raw
 * bytes before the body is parsed; a repeated id answers 200 and does nothing. */
#include <stdio.h>
#include <string.h>

#include "api/api.h"
#include "app.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "partners/partners.h"
#include "services/events.h"

static const http_field_t webhook_fields[] = {
    {.name = "id", .type = HTTP_T_STRING, .required = true, .min = 1, .max = 200},
    {.name = "type", .type = HTTP_T_STRING, .required = true, .min = 1, .max = 200},
    {.name = "data", .type = HTTP_T_OBJECT, .required = true},
    {0},
};
const http_body_t api_partners_webhook_body = {webhook_fields, false, true};

int api_partners_webhook_guard(http_req_t *req) {
  app_t *app = http_req_app(req);
  int p = config_partner_by_name(http_req_param(req, "name"));
  if (p < 0) return http_reply_problem(req, ERR_NOT_FOUND, "no such partner", NULL), -1;
  size_t len;
  const char *body = http_req_body(req, &len);
  if (!partner_signature_valid(app->cfg->partners[p].secret,
                               http_req_header(req, "Iotfin-Signature"), body, len,
                               time_now_ms() / 1000)) {
    log_warn("partners", "refused a %s webhook: bad, missing or stale signature",
             config_partner_name(p));
    return http_reply_problem(req, ERR_UNAUTHENTICATED,
                              "Iotfin-Signature is missing, wrong or older than 300 s", NULL),
           -1;
  }
  return 0;
}

typedef struct {
  const char *partner, *id, *type;
  json_t *data;
  bool duplicate;
} hook_t;

static int hook_tx(store_tx_t *tx, void *arg) {
  hook_t *h = arg;
  char ts[32], subject[64];
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  int rc = store_exec(tx, NULL,
                      "INSERT INTO webhooks (partner, id, received_at) VALUES (?, ?, ?) "
                      "ON CONFLICT (partner, id) DO NOTHING",
                      "sss", h->partner, h->id, ts);
  if (rc < 0) return rc;
  if (rc == 0) {
    h->duplicate = true;
    return 0;
  }
  snprintf(subject, sizeof(subject), "partners/%s", h->partner);
  return events_record(tx, "partner.webhook.received", subject,
                       json_pack("{s:s,s:s,s:s,s:O}", "partner", h->partner, "webhook_id", h->id,
                                 "type", h->type, "data", h->data),
                       NULL);
}

int api_partners_webhook(http_req_t *req) {
  json_t *body = http_req_json(req);
  hook_t h = {
      config_partner_name((partner_id_t)config_partner_by_name(http_req_param(req, "name"))),
      json_string_value(json_object_get(body, "id")),
      json_string_value(json_object_get(body, "type")), json_object_get(body, "data"), false};
  int rc = store_write(http_req_app(req)->store, hook_tx, &h);
  if (rc < 0) return rc;
  if (h.duplicate)
    return http_reply_json(req, 200, json_pack("{s:s,s:s}", "id", h.id, "status", "duplicate"));
  return http_reply_json(req, 202, json_pack("{s:s,s:s}", "id", h.id, "status", "accepted"));
}
