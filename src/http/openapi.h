/* Generates the OpenAPI 3.1 document from the route table that serves requests,
 * so the document cannot drift from the code. */
#ifndef IOTFIN_HTTP_OPENAPI_H
#define IOTFIN_HTTP_OPENAPI_H

#include "http/http.h"

/* The whole document; the caller owns the new reference. */
json_t *http_openapi(const http_route_t *routes, int n);
/* The paths object alone. */
json_t *http_openapi_paths(const http_route_t *routes, int n);

#endif
