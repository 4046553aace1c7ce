/* The one route table. It serves requests, drives validation and generates
 * /openapi.json; its order is the order of the document. Each row says who may
 * call the route (auth), what body it takes, and which middleware applies. */
#include "api/api.h"

#define ADMIN HTTP_AUTH_ADMIN
#define USER HTTP_AUTH_USER

const http_route_t api_routes[] = {
    /* Operations. */
    {.method = "GET", .path = "/healthz", .handler = api_system_healthz, .success_status = 200,
     .summary = "Liveness: 200 while the process lives", .tag = "operations"},
    {.method = "GET", .path = "/readyz", .handler = api_system_readyz, .success_status = 200,
     .summary = "Readiness: 200 when the store and the broker are reachable",
     .tag = "operations"},
    {.method = "GET", .path = "/metrics", .handler = api_system_metrics, .success_status = 200,
     .summary = "Prometheus metrics", .tag = "operations"},
    {.method = "GET", .path = "/openapi.json", .handler = api_system_openapi,
     .success_status = 200, .summary = "This document", .tag = "operations"},

    /* Sessions and users. */
    {.method = "GET", .path = "/.well-known/jwks.json", .handler = api_system_jwks,
     .success_status = 200, .summary = "Public keys that verify iotfin tokens",
     .tag = "sessions"},
    {.method = "POST", .path = "/v1/sessions/anonymous", .handler = api_sessions_anonymous,
     .success_status = 201, .summary = "Open an anonymous session", .tag = "sessions",
     .auth_rate_limited = true},
    {.method = "POST", .path = "/v1/registrations", .auth = HTTP_AUTH_ANONYMOUS,
     .handler = api_sessions_register, .body = &api_sessions_registration_body,
     .success_status = 202, .summary = "Register a local or partner user; KYC follows",
     .tag = "sessions", .idempotent_key = true, .auth_rate_limited = true},
    {.method = "GET", .path = "/v1/registrations/{id}", .auth = HTTP_AUTH_REGISTRATION,
     .handler = api_sessions_registration_get, .success_status = 200,
     .summary = "A registration's status", .tag = "sessions", .auth_rate_limited = true},
    {.method = "POST", .path = "/v1/registrations/{id}/session", .auth = HTTP_AUTH_REGISTRATION,
     .handler = api_sessions_registration_session, .success_status = 201,
     .summary = "Trade an approved registration for a user session", .tag = "sessions",
     .auth_rate_limited = true},
    {.method = "POST", .path = "/v1/sessions", .handler = api_sessions_login,
     .body = &api_sessions_login_body, .success_status = 201,
     .summary = "Sign in with email or partner username and password", .tag = "sessions",
     .auth_rate_limited = true},
    {.method = "POST", .path = "/v1/sessions/refresh", .handler = api_sessions_refresh,
     .body = &api_sessions_refresh_body, .success_status = 201,
     .summary = "Trade a refresh token for a new pair", .tag = "sessions",
     .auth_rate_limited = true},
    {.method = "DELETE", .path = "/v1/sessions/current", .auth = USER,
     .handler = api_sessions_logout, .success_status = 204,
     .summary = "Revoke the current session", .tag = "sessions", .auth_rate_limited = true},
    {.method = "GET", .path = "/v1/me", .auth = USER, .handler = api_sessions_me,
     .success_status = 200, .summary = "The signed-in user", .tag = "sessions"},

    /* Partners. */
    {.method = "POST", .path = "/v1/partners/{name}/webhooks", .handler = api_partners_webhook,
     .body = &api_partners_webhook_body, .guard = api_partners_webhook_guard,
     .success_status = 202, .summary = "Signed partner callbacks", .tag = "partners"},

    /* The partner mock (IOTFIN_MOCK=on); the control routes come before the catch-all. */
    {.method = "PUT", .path = "/mock/_control/responses", .handler = api_mock_put_response,
     .body = &api_mock_override_body, .success_status = 201,
     .summary = "Override the mock's answer to a call", .tag = "mock"},
    {.method = "DELETE", .path = "/mock/_control/responses",
     .handler = api_mock_delete_responses, .success_status = 204,
     .summary = "Clear every override", .tag = "mock"},
    {.method = "GET", .path = "/mock/_control/requests", .handler = api_mock_get_requests,
     .success_status = 200, .summary = "Every call the mock received (?partner=)",
     .tag = "mock"},
    {.method = "DELETE", .path = "/mock/_control/requests", .handler = api_mock_delete_requests,
     .success_status = 204, .summary = "Clear the mock's request log", .tag = "mock"},
    {.method = "*", .path = "/mock/{partner}/{path*}", .handler = api_mock_any,
     .success_status = 200, .summary = "Answer as partner would (overrides, files, OpenAPI)",
     .tag = "mock"},

    /* Administration. */
    {.method = "POST", .path = "/v1/admin/devices/import", .auth = ADMIN,
     .handler = api_admin_devices_import, .body = &api_admin_devices_import_body,
     .success_status = 200, .summary = "Import supplier serials (JSON or CSV)", .tag = "admin"},
    {.method = "GET", .path = "/v1/admin/queues", .auth = ADMIN, .handler = api_admin_queues_list,
     .success_status = 200, .summary = "Queues with their depths", .tag = "admin"},
    {.method = "GET", .path = "/v1/admin/queues/{name}/dead-letters", .auth = ADMIN,
     .handler = api_admin_queues_dead_letters, .success_status = 200,
     .summary = "A queue's dead letters, paginated", .tag = "admin"},
    {.method = "POST", .path = "/v1/admin/queues/{name}/redrive", .auth = ADMIN,
     .handler = api_admin_queues_redrive, .body = &api_admin_redrive_body,
     .success_status = 200, .summary = "Put dead letters back on their queue with a fresh count",
     .tag = "admin"},
    {.method = "GET", .path = "/v1/admin/alarms", .auth = ADMIN, .handler = api_admin_alarms_list,
     .success_status = 200, .summary = "Alarms on dead-letter queues", .tag = "admin"},
    {.method = "POST", .path = "/v1/admin/keys/rotate", .auth = ADMIN,
     .handler = api_system_rotate_keys, .success_status = 201,
     .summary = "Start signing with a new key; old keys verify until their tokens expire",
     .tag = "admin"},
    {.method = "GET", .path = "/v1/admin/events", .auth = ADMIN, .handler = api_admin_events_list,
     .success_status = 200, .summary = "The event log, oldest first (?type=&subject=&after=)",
     .tag = "admin"},
};

const int api_routes_count = (int)(sizeof(api_routes) / sizeof(api_routes[0]));
