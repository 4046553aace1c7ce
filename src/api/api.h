/* The route table and the handler of every route. One file per resource
 * (api_sessions.c, api_admin_devices.c, ...); routes.c holds the single table
 * that serves requests and generates /openapi.json. */
#ifndef IOTFIN_API_API_H
#define IOTFIN_API_API_H

#include "http/http.h"

extern const http_route_t api_routes[];
extern const int api_routes_count;

int api_system_healthz(http_req_t *req);
int api_system_readyz(http_req_t *req);
int api_system_metrics(http_req_t *req);
int api_system_openapi(http_req_t *req);
int api_system_jwks(http_req_t *req);
int api_system_rotate_keys(http_req_t *req);

int api_sessions_anonymous(http_req_t *req);
extern const http_body_t api_sessions_registration_body, api_sessions_login_body,
    api_sessions_refresh_body;
int api_sessions_register(http_req_t *req);
int api_sessions_registration_get(http_req_t *req);
int api_sessions_registration_session(http_req_t *req);
int api_sessions_login(http_req_t *req);
int api_sessions_refresh(http_req_t *req);
int api_sessions_logout(http_req_t *req);
int api_sessions_me(http_req_t *req);

extern const http_body_t api_partners_webhook_body;
int api_partners_webhook_guard(http_req_t *req);
int api_partners_webhook(http_req_t *req);

extern const http_body_t api_admin_devices_import_body;
int api_admin_devices_import(http_req_t *req);

int api_admin_queues_list(http_req_t *req);
int api_admin_queues_dead_letters(http_req_t *req);
extern const http_body_t api_admin_redrive_body;
int api_admin_queues_redrive(http_req_t *req);
int api_admin_alarms_list(http_req_t *req);
int api_admin_events_list(http_req_t *req);

extern const http_body_t api_devices_claim_body, api_devices_command_body;
int api_devices_claim(http_req_t *req);
int api_devices_list(http_req_t *req);
int api_devices_get(http_req_t *req);
int api_devices_retire(http_req_t *req);
int api_devices_credentials(http_req_t *req);
int api_devices_command_create(http_req_t *req);
int api_devices_command_get(http_req_t *req);
int api_devices_events(http_req_t *req);
int api_stream_events(http_req_t *req);
/* Every event (?type= exact or "prefix*", ?subject=) as SSE, resumable with
 * Last-Event-ID, for as long as the console session console_sid is signed in. */
int api_stream_all_events(http_req_t *req, const char *console_sid);
/* Ends every open stream and the stream notifier (before the HTTP server stops). */
void api_stream_shutdown(void);

bool api_mock_enabled(const struct app *app);
int api_mock_any(http_req_t *req);
extern const http_body_t api_mock_override_body;
int api_mock_put_response(http_req_t *req);
int api_mock_delete_responses(http_req_t *req);
int api_mock_get_requests(http_req_t *req);
int api_mock_delete_requests(http_req_t *req);

/* The operator console (api_console.c): its files, its session, its reads. */
int api_console_guard(http_req_t *req);
int api_console_signin_guard(http_req_t *req);
extern const http_body_t api_console_signin_body;
int api_console_redirect(http_req_t *req);
int api_console_asset(http_req_t *req);
int api_console_signin(http_req_t *req);
int api_console_whoami(http_req_t *req);
int api_console_signout(http_req_t *req);
int api_console_overview(http_req_t *req);
int api_console_device(http_req_t *req);
int api_console_events(http_req_t *req);
int api_console_stream(http_req_t *req);

#endif
