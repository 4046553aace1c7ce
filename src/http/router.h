/* Route matching over the one route table: exact segments and {param} segments.
 * Pure functions with no I/O, so they are unit-tested directly. */
#ifndef IOTFIN_HTTP_ROUTER_H
#define IOTFIN_HTTP_ROUTER_H

#include "http/http.h"

#define HTTP_MAX_PARAMS 4
#define HTTP_PARAM_MAX 512

typedef struct {
  int nparams;
  char names[HTTP_MAX_PARAMS][32];
  char values[HTTP_MAX_PARAMS][HTTP_PARAM_MAX];
  char allow[128];     /* on 405: the methods the path does allow, "GET, POST" */
  const char *pattern; /* on 405: the first route pattern that matched the path */
} http_match_t;

/* Patterns: exact segments, {name} for one segment, {name*} (last) for the rest of
 * the path. A route whose method is "*" takes any method. */
/* Finds the route for method and path. Returns its index, -ERR_NOT_FOUND when no
 * pattern matches the path, or -ERR_METHOD_NOT_ALLOWED with m->allow filled when
 * the path exists under other methods. HEAD matches GET routes. */
int http_router_match(const http_route_t *routes, int n, const char *method, const char *path,
                      http_match_t *m);

#endif
