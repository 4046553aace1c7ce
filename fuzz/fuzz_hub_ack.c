/* Command acks (devices/<id>/commands/<cid>/ack) as the hub parses them. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hub/payloads.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *status = NULL, *why = NULL;
  json_t *result = NULL;
  json_t *a = hub_ack_parse(data, size, &status, &result, &why);
  if (!a) {
    if (!why) abort();
    return 0;
  }
  if (!status || (strcmp(status, "succeeded") != 0 && strcmp(status, "failed") != 0)) abort();
  if (result && !json_is_object(result)) abort();
  json_decref(a);
  return 0;
}
