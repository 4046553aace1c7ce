/* Device routes (CONTRACT section 4): claim, list, read, retire, credentials,
 * commands and the events a device raised. Another user's device is a 404. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "app.h"
#include "core/errors.h"
#include "hub/hub.h"
#include "services/devices.h"

static bool command_type_valid(const char *s) {
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' ||
          *s == '-'))
      return false;
  return true;
}

static const http_field_t claim_fields[] = {
    {.name = "serial",
     .type = HTTP_T_STRING,
     .required = true,
     .min = 4,
     .max = 64,
     .pattern = "^[A-Za-z0-9-]{4,64}$",
     .check = devices_serial_valid},
    {0},
};
const http_body_t api_devices_claim_body = {claim_fields, false, false};

static const http_field_t command_fields[] = {
    {.name = "type",
     .type = HTTP_T_STRING,
     .required = true,
     .min = 1,
     .max = 64,
     .pattern = "^[a-z0-9._-]{1,64}$",
     .check = command_type_valid},
    {.name = "payload", .type = HTTP_T_OBJECT, .required = true, .max = 8192},
    {.name = "ttl_seconds", .type = HTTP_T_INT, .min = 1, .max = 86400},
    {0},
};
const http_body_t api_devices_command_body = {command_fields, false, false};

static const char *user_of(http_req_t *req) { return http_req_claims(req)->sub; }

int api_devices_claim(http_req_t *req) {
  json_t *out;
  const char *serial = json_string_value(json_object_get(http_req_json(req), "serial"));
  int rc = devices_claim(http_req_app(req), user_of(req), serial, http_req_idem(req), &out);
  if (rc == -ERR_UNKNOWN_SERIAL)
    return http_reply_problem(req, rc, "this serial is not in the supplier manifest", NULL);
  if (rc == -ERR_ALREADY_CLAIMED)
    return http_reply_problem(req, rc, "this device is already claimed", NULL);
  if (rc < 0) return rc;
  return http_reply_json(req, 202, out);
}

static int reply_page(http_req_t *req, json_t *items, char *next) {
  json_t *body =
      json_pack("{s:o,s:o}", "items", items, "next_cursor", next ? json_string(next) : json_null());
  free(next);
  return http_reply_json(req, 200, body);
}

int api_devices_list(http_req_t *req) {
  int limit;
  const char *cursor;
  if (http_req_page(req, &limit, &cursor) < 0) return 0;
  json_t *items;
  char *next;
  int rc = devices_list(http_req_app(req), user_of(req), cursor, limit, &items, &next);
  if (rc < 0) return rc;
  return reply_page(req, items, next);
}

int api_devices_get(http_req_t *req) {
  char *json;
  size_t len;
  int rc = devices_get(http_req_app(req), user_of(req), http_req_param(req, "id"), &json, &len);
  if (rc < 0) return rc;
  return http_reply_json_text(req, 200, json, len);
}

int api_devices_retire(http_req_t *req) {
  app_t *app = http_req_app(req);
  const char *id = http_req_param(req, "id");
  json_t *out;
  int rc = devices_retire(app, user_of(req), id, &out);
  if (rc < 0) return rc;
  hub_device_revoked(app->hub, id, NULL); /* closes its MQTT connection now */
  return http_reply_json(req, 200, out);
}

int api_devices_credentials(http_req_t *req) {
  json_t *out;
  int rc = devices_credentials(http_req_app(req), user_of(req), http_req_param(req, "id"), &out);
  if (rc == -ERR_DEVICE_NOT_ACTIVE)
    return http_reply_problem(req, rc, "credentials are issued to active devices only", NULL);
  if (rc < 0) return rc;
  return http_reply_json(req, 201, out);
}

int api_devices_command_create(http_req_t *req) {
  app_t *app = http_req_app(req);
  const char *id = http_req_param(req, "id");
  char *json;
  size_t len;
  int rc = devices_command_create(app, user_of(req), id, http_req_json(req), http_req_idem(req),
                                  &json, &len);
  if (rc == -ERR_DEVICE_NOT_ACTIVE)
    return http_reply_problem(req, rc, "commands go to active devices only", NULL);
  if (rc < 0) return rc;
  hub_command_queued(app->hub, id);
  return http_reply_json_text(req, 202, json, len);
}

int api_devices_command_get(http_req_t *req) {
  json_t *out;
  int rc = devices_command_get(http_req_app(req), user_of(req), http_req_param(req, "id"),
                               http_req_param(req, "cid"), &out);
  if (rc < 0) return rc;
  return http_reply_json(req, 200, out);
}

int api_devices_events(http_req_t *req) {
  int limit;
  const char *cursor;
  if (http_req_page(req, &limit, &cursor) < 0) return 0;
  json_t *items;
  char *next;
  int rc = devices_events_list(http_req_app(req), user_of(req), http_req_param(req, "id"), cursor,
                               limit, &items, &next);
  if (rc < 0) return rc;
  return reply_page(req, items, next);
}
