/* Checks a JSON body against a route's declarative body schema. */
#ifndef IOTFIN_HTTP_VALIDATE_H
#define IOTFIN_HTTP_VALIDATE_H

#include "http/http.h"

/* Returns NULL when body conforms to spec, else a new array of {field, message}
 * naming every problem found (missing, wrong type, out of range, unknown). Item
 * fields of arrays are documentation only: handlers that report per-item results
 * (device import) check items themselves. */
json_t *http_validate(const http_body_t *spec, json_t *body);

/* Query parameters of paginated lists (CONTRACT: ?limit= and ?cursor=). limit:
 * NULL means the default 50; a positive integer is used, capped at 200; anything
 * else returns -1. Numeric cursors (ids the API issued): NULL or "" is 0, a
 * non-negative decimal is its value, anything else -1. Pure, any thread. */
int http_validate_limit(const char *s, int *limit);
int64_t http_validate_cursor(const char *s);

/* Builds a problem+json object (RFC 9457) for err; errors is stolen. */
json_t *http_problem_new(int err, const char *detail, json_t *errors, const char *instance);

#endif
