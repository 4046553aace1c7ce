/* The one route table. Order does not matter for matching; it is the order of
 * /openapi.json. Each row says who may call the route and what body it takes. */
#include "api/api.h"

const http_route_t api_routes[] = {
    {"GET", "/healthz", 0, api_system_healthz, NULL, 200, "Liveness: 200 while the process lives",
     "operations", false, false},
    {"GET", "/readyz", 0, api_system_readyz, NULL, 200,
     "Readiness: 200 when the store and the broker are reachable", "operations", false, false},
    {"GET", "/metrics", 0, api_system_metrics, NULL, 200, "Prometheus metrics", "operations",
     false, false},
    {"GET", "/openapi.json", 0, api_system_openapi, NULL, 200, "This document", "operations",
     false, false},
    {"GET", "/.well-known/jwks.json", 0, api_system_jwks, NULL, 200,
     "Public keys that verify iotfin tokens", "sessions", false, false},
    {"POST", "/v1/sessions/anonymous", 0, api_sessions_anonymous, NULL, 201,
     "Open an anonymous session", "sessions", false, true},
    {"POST", "/v1/admin/devices/import", HTTP_AUTH_ADMIN, api_admin_devices_import,
     &api_admin_devices_import_body, 200, "Import supplier serials (JSON or CSV)", "admin", false,
     false},
};

const int api_routes_count = (int)(sizeof(api_routes) / sizeof(api_routes[0]));
