/* Request bodies against every route's schema, as the gateway treats them
 * (http/server.c): parse with the same jansson flags, validate against the route's
 * declarative body (http/validate.c), build the problem+json answer. The first byte
 * picks the route among those with a body; the rest is the body. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "api/api.h"
#include "core/errors.h"
#include "http/validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const http_route_t *with_body[64];
  int n = 0;
  for (int i = 0; i < api_routes_count && n < 64; i++)
    if (api_routes[i].body) with_body[n++] = &api_routes[i];
  const http_route_t *rt = with_body[data[0] % n];
  json_error_t jerr;
  json_t *body =
      json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
  if (!body) return 0;
  json_t *errs = http_validate(rt->body, body);
  if (errs) {
    json_t *p = http_problem_new(ERR_VALIDATION_FAILED, "the body does not match the schema", errs,
                                 rt->path);
    char *s = json_dumps(p, JSON_COMPACT);
    if (!s) abort(); /* every problem must serialise: it is what the client gets */
    free(s);
    json_decref(p);
  }
  json_decref(body);
  return 0;
}
