/* Device requests (devices/<id>/requests/<name>): the request id becomes a topic
 * level of the answer, so it must never carry / + # or be empty or long. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/payloads.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *rid = NULL;
  json_t *d = NULL;
  json_t *r = hub_request_parse(data, size, &rid, &d);
  if (!r) return 0;
  size_t n = strlen(rid);
  if (n < 1 || n > 128 || strpbrk(rid, "/+#") || !json_is_object(d)) abort();
  char topic[300];
  snprintf(topic, sizeof(topic), "devices/%s/responses/%s", "dev", rid);
  json_decref(r);
  return 0;
}
