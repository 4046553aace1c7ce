/* Session and user routes (CONTRACT section 3): anonymous sessions, registration,
 * login, refresh, logout and /v1/me. Each handler parses, calls one service
 * function and replies once. Partner registrations and logins wait on IDENTITY,
 * so they run on the gateway's worker pool (http_req_offload), never on a
 * request thread. */
#include <string.h>

#include "api/api.h"
#include "app.h"
#include "core/errors.h"
#include "services/sessions.h"
#include "services/users.h"

static const http_field_t registration_fields[] = {
    {.name = "type", .type = HTTP_T_STRING, .required = true, .enum_values = "local|partner"},
    {.name = "email",
     .type = HTTP_T_STRING,
     .min = 3,
     .max = 254,
     .description = "local users: the sign-in email"},
    {.name = "password",
     .type = HTTP_T_STRING,
     .min = 1,
     .max = 1024,
     .description = "local users: at least 10 characters; partner users: the IDENTITY password"},
    {.name = "name",
     .type = HTTP_T_STRING,
     .min = 1,
     .max = 200,
     .description = "local users: display name"},
    {.name = "username",
     .type = HTTP_T_STRING,
     .min = 1,
     .max = 200,
     .description = "partner users: the IDENTITY username"},
    {0},
};
const http_body_t api_sessions_registration_body = {registration_fields, false, false};

static const http_field_t login_fields[] = {
    {.name = "type",
     .type = HTTP_T_STRING,
     .enum_values = "local|partner",
     .description = "partner for IDENTITY users; local when left out"},
    {.name = "email", .type = HTTP_T_STRING, .min = 1, .max = 254},
    {.name = "username", .type = HTTP_T_STRING, .min = 1, .max = 200},
    {.name = "password", .type = HTTP_T_STRING, .required = true, .min = 1, .max = 1024},
    {0},
};
const http_body_t api_sessions_login_body = {login_fields, false, false};

static const http_field_t refresh_fields[] = {
    {.name = "refresh_token", .type = HTTP_T_STRING, .required = true, .min = 1, .max = 512},
    {0},
};
const http_body_t api_sessions_refresh_body = {refresh_fields, false, false};

/* Replies with a service error, passing validation details through. */
static int reply_err(http_req_t *req, int rc, json_t *errors) {
  if (rc == -ERR_VALIDATION_FAILED)
    return http_reply_problem(req, rc, "the body does not match the schema", errors);
  json_decref(errors);
  const char *detail = NULL;
  if (rc == -ERR_FORBIDDEN) detail = "the user is not approved";
  if (rc == -ERR_EMAIL_TAKEN) detail = "a user with this email exists";
  if (rc == -ERR_UPSTREAM_UNAVAILABLE) detail = "the identity partner is not reachable";
  return http_reply_problem(req, rc, detail, NULL);
}

int api_sessions_anonymous(http_req_t *req) {
  json_t *out;
  int rc = sessions_create_anonymous(http_req_app(req), &out);
  if (rc < 0) return rc;
  return http_reply_json(req, 201, out);
}

static bool is_partner(http_req_t *req) {
  const char *type = json_string_value(json_object_get(http_req_json(req), "type"));
  return type && strcmp(type, "partner") == 0;
}

static int register_run(http_req_t *req) {
  json_t *out = NULL, *errors = NULL;
  int rc = users_register(http_req_app(req), http_req_json(req), http_req_idem(req), &out, &errors);
  if (rc < 0) return reply_err(req, rc, errors);
  return http_reply_json(req, 202, out);
}

int api_sessions_register(http_req_t *req) {
  return is_partner(req) ? http_req_offload(req, register_run) : register_run(req);
}

int api_sessions_registration_get(http_req_t *req) {
  json_t *out;
  int rc = users_registration_get(http_req_app(req), http_req_claims(req),
                                  http_req_param(req, "id"), &out);
  if (rc < 0) return rc;
  return http_reply_json(req, 200, out);
}

int api_sessions_registration_session(http_req_t *req) {
  json_t *out;
  int rc = users_registration_session(http_req_app(req), http_req_claims(req),
                                      http_req_param(req, "id"), &out);
  if (rc == -ERR_FORBIDDEN)
    return http_reply_problem(req, rc, "the registration was rejected", NULL);
  if (rc < 0) return rc;
  return http_reply_json(req, 201, out);
}

static int login_run(http_req_t *req) {
  json_t *out = NULL, *errors = NULL;
  int rc = users_login(http_req_app(req), http_req_json(req), &out, &errors);
  if (rc < 0) return reply_err(req, rc, errors);
  return http_reply_json(req, 201, out);
}

int api_sessions_login(http_req_t *req) {
  return is_partner(req) ? http_req_offload(req, login_run) : login_run(req);
}

int api_sessions_refresh(http_req_t *req) {
  json_t *out;
  const char *tok = json_string_value(json_object_get(http_req_json(req), "refresh_token"));
  int rc = sessions_refresh(http_req_app(req), tok, &out);
  if (rc == -ERR_UNAUTHENTICATED)
    return http_reply_problem(req, rc, "the refresh token is not valid", NULL);
  if (rc < 0) return rc;
  return http_reply_json(req, 201, out);
}

int api_sessions_logout(http_req_t *req) {
  int rc = sessions_revoke(http_req_app(req), http_req_claims(req)->sid, "logout");
  if (rc < 0) return rc;
  return http_reply_text(req, 204, "application/json", "");
}

int api_sessions_me(http_req_t *req) {
  char *json;
  size_t len;
  int rc = users_me(http_req_app(req), http_req_claims(req)->sub, &json, &len);
  if (rc < 0) return rc;
  return http_reply_json_text(req, 200, json, len);
}
