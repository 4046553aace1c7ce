/* The HTTP gateway: libmicrohttpd with its own thread pool, the route table and
 * the middleware of DESIGN.md in a fixed order. */
#ifndef IOTFIN_HTTP_SERVER_H
#define IOTFIN_HTTP_SERVER_H

#include "app.h"
#include "http/http.h"

#define HTTP_MAX_BODY (64 * 1024)

typedef struct http_server http_server_t;

/* Starts serving routes[0..n) on host:port (port 0 picks one). The table must
 * outlive the server. Returns 0 and *out, or -ERR_UNAVAILABLE with a log line. */
int http_server_start(app_t *app, const http_route_t *routes, int n, const char *host, int port,
                      http_server_t **out);
/* The port actually bound. */
int http_server_port(const http_server_t *srv);
/* Stops accepting, waits up to timeout_ms for requests in flight, then stops. */
void http_server_stop(http_server_t **srv, int timeout_ms);

#endif
