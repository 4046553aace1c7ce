/* The partner mock (CONTRACT section 7), mounted at /mock/ while IOTFIN_MOCK=on:
 * answers as a partner would from runtime overrides, then files under
 * IOTFIN_MOCK_DIR, then the first 2xx example of the partner's openapi.json; logs
 * every call; and sends delayed, signed callbacks like a real partner. No rate
 * limit applies to it, ever. */
#ifndef IOTFIN_PARTNERS_MOCK_H
#define IOTFIN_PARTNERS_MOCK_H

#include <jansson.h>

#include "app.h"

typedef struct partner_mock partner_mock_t;

/* Starts the mock's callback thread. Returns 0 and *out, or -ERR_INTERNAL. */
int partner_mock_start(app_t *app, partner_mock_t **out);
/* Stops the callback thread (pending callbacks are dropped) and frees. */
void partner_mock_stop(partner_mock_t **mock);

/* Answer source resolution, exposed for unit tests: finds the file answering
 * method on partner/path under dir (with `_` matching one segment). Returns the
 * parsed file (caller owns) or NULL. */
json_t *partner_mock_find_file(const char *dir, const char *partner, const char *path,
                               const char *method);
/* Finds the first 2xx example for method path in an OpenAPI document; returns
 * {status, body} (caller owns) or NULL. */
json_t *partner_mock_openapi_example(json_t *openapi, const char *path, const char *method);
/* Fills {{request.body.X}}, {{response.body.X}} and {{uuid}} in every string of v.
 * Returns a new value; request and response may be NULL. */
json_t *partner_mock_fill(json_t *v, json_t *request, json_t *response);

#endif
