/* Operational routes: liveness, readiness, metrics, the OpenAPI document, JWKS. */
#include <stdlib.h>

#include "api/api.h"
#include "app.h"
#include "core/errors.h"
#include "core/metrics.h"
#include "http/openapi.h"
#include "hub/hub.h"
#include "hub/mqtt.h"
#include "services/signing_keys.h"

int api_system_healthz(http_req_t *req) {
  return http_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

int api_system_readyz(http_req_t *req) {
  app_t *app = http_req_app(req);
  bool store_ok = store_ping(app->store) == 0;
  bool broker_ok = app->mqtt && hub_mqtt_connected(app->mqtt);
  json_t *body =
      json_pack("{s:s,s:{s:s,s:s}}", "status", store_ok && broker_ok ? "ready" : "unavailable",
                "checks", "store", store_ok ? "ok" : "down", "broker", broker_ok ? "ok" : "down");
  if (store_ok && broker_ok) return http_reply_json(req, 200, body);
  json_decref(body);
  const char *why = store_failure(app->store);
  return http_reply_problem(req, ERR_UNAVAILABLE,
                            !store_ok ? (why ? why : "the store is not reachable")
                                      : "the MQTT broker is not reachable",
                            NULL);
}

int api_system_metrics(http_req_t *req) {
  char *text = metrics_render();
  if (!text) return -ERR_INTERNAL;
  int rc = http_reply_text(req, 200, "text/plain; version=0.0.4", text);
  free(text);
  return rc;
}

int api_system_openapi(http_req_t *req) {
  return http_reply_json(req, 200, http_openapi(api_routes, api_routes_count));
}

int api_system_jwks(http_req_t *req) {
  return http_reply_json(req, 200, auth_keys_jwks(http_req_app(req)->keys));
}

int api_system_rotate_keys(http_req_t *req) {
  app_t *app = http_req_app(req);
  int64_t keep = app->cfg->access_ttl_s > app->cfg->device_token_ttl_s
                     ? app->cfg->access_ttl_s
                     : app->cfg->device_token_ttl_s;
  char kid[17];
  int rc = signing_keys_rotate(app, keep, kid);
  if (rc < 0) return rc;
  hub_keys_changed(app->hub); /* the broker verifies device tokens with the same keys */
  return http_reply_json(req, 201, json_pack("{s:s}", "kid", kid));
}
