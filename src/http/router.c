/* Segment-by-segment matcher. The table is small (tens of routes), so a linear scan
 * costs less than building a tree and keeps the table the single source of truth. */
#include "http/router.h"

#include <string.h>

#include "core/errors.h"

/* Matches one pattern against path; fills params on success. */
static bool match_path(const char *pattern, const char *path, http_match_t *m) {
  m->nparams = 0;
  const char *p = pattern, *s = path;
  while (*p && *s) {
    if (*p != '/' || *s != '/') return false;
    p++;
    s++;
    const char *pe = strchr(p, '/'), *se = strchr(s, '/');
    size_t pl = pe ? (size_t)(pe - p) : strlen(p);
    size_t sl = se ? (size_t)(se - s) : strlen(s);
    if (pl > 3 && p[0] == '{' && p[pl - 2] == '*' && p[pl - 1] == '}') {
      /* {name*}: the rest of the path, one segment or more. */
      size_t rest = strlen(s);
      if (rest == 0 || rest >= HTTP_PARAM_MAX || m->nparams == HTTP_MAX_PARAMS) return false;
      size_t nl = pl - 3 < 31 ? pl - 3 : 31;
      memcpy(m->names[m->nparams], p + 1, nl);
      m->names[m->nparams][nl] = 0;
      memcpy(m->values[m->nparams], s, rest + 1);
      m->nparams++;
      return p[pl] == 0;
    }
    if (pl > 2 && p[0] == '{' && p[pl - 1] == '}') {
      if (sl == 0 || sl >= HTTP_PARAM_MAX || m->nparams == HTTP_MAX_PARAMS) return false;
      size_t nl = pl - 2 < 31 ? pl - 2 : 31;
      memcpy(m->names[m->nparams], p + 1, nl);
      m->names[m->nparams][nl] = 0;
      memcpy(m->values[m->nparams], s, sl);
      m->values[m->nparams][sl] = 0;
      m->nparams++;
    } else if (pl != sl || memcmp(p, s, pl) != 0) {
      return false;
    }
    p += pl;
    s += sl;
  }
  return *p == 0 && *s == 0;
}

int http_router_match(const http_route_t *routes, int n, const char *method, const char *path,
                      http_match_t *m) {
  m->nparams = 0;
  m->allow[0] = 0;
  m->pattern = NULL;
  const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
  /* The route of this method first: a request that has one (nearly all) tries no
   * other pattern. Matching fills m in place, so nothing is copied per request. */
  for (int i = 0; i < n; i++)
    if (strcmp(routes[i].method, want) == 0 && match_path(routes[i].path, path, m)) return i;
  /* A known path with another method is a 405, even where a catch-all ("*") route
   * would also match it. */
  for (int i = 0; i < n; i++) {
    if (strcmp(routes[i].method, "*") == 0 || !match_path(routes[i].path, path, m)) continue;
    if (!strstr(m->allow, routes[i].method)) {
      size_t used = strlen(m->allow);
      if (used + strlen(routes[i].method) + 3 < sizeof(m->allow)) {
        if (used) strcat(m->allow, ", ");
        strcat(m->allow, routes[i].method);
      }
    }
    if (!m->pattern) m->pattern = routes[i].path;
  }
  if (m->pattern) return -ERR_METHOD_NOT_ALLOWED;
  for (int i = 0; i < n; i++)
    if (strcmp(routes[i].method, "*") == 0 && match_path(routes[i].path, path, m)) return i;
  m->nparams = 0;
  return -ERR_NOT_FOUND;
}
