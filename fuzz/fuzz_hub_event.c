/* Device events (devices/<id>/events), parsed by hub_event_parse for both the MQTT
 * path and the spool. Oracle: an accepted event has the fields the store relies on. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "hub/spool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *why = NULL;
  json_t *e = hub_event_parse(data, size, &why);
  if (!e) {
    if (!why) abort();
    return 0;
  }
  if (!json_is_string(json_object_get(e, "id")) || !json_is_string(json_object_get(e, "type")) ||
      !json_is_object(json_object_get(e, "data")))
    abort();
  char *s = json_dumps(e, JSON_COMPACT);
  if (!s) abort();
  free(s);
  json_decref(e);
  return 0;
}
