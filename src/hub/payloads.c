/* Device and plugin payload parsers (see payloads.h). Kept apart from hub.c's
 * threads and queues so they can be fuzzed on their own; every byte here comes from
 * outside iotfin. */
#include "hub/payloads.h"

#include <string.h>

json_t *hub_ack_parse(const void *payload, size_t len, const char **status, json_t **result,
                      const char **why) {
  json_t *a = json_loadb(payload ? payload : "", len, 0, NULL);
  const char *s = json_string_value(json_object_get(a, "status"));
  json_t *r = json_object_get(a, "result");
  if (!s || (strcmp(s, "succeeded") != 0 && strcmp(s, "failed") != 0) ||
      (r && !json_is_object(r) && !json_is_null(r))) {
    *why = a ? "ack needs status succeeded|failed and an optional result object" : "not JSON";
    json_decref(a);
    return NULL;
  }
  *status = s;
  *result = json_is_object(r) ? r : NULL;
  return a;
}

bool hub_topic_level_safe(const char *s) {
  size_t n = strlen(s);
  return n >= 1 && n <= 128 && !strpbrk(s, "/+#");
}

json_t *hub_request_parse(const void *payload, size_t len, const char **request_id, json_t **data) {
  json_t *r = json_loadb(payload ? payload : "", len, 0, NULL);
  const char *rid = json_string_value(json_object_get(r, "request_id"));
  json_t *d = json_object_get(r, "data");
  if (!rid || !hub_topic_level_safe(rid) || !json_is_object(d)) {
    json_decref(r);
    return NULL;
  }
  *request_id = rid;
  *data = d;
  return r;
}

hub_presence_t hub_presence_parse(const void *payload, size_t len) {
  json_t *p = json_loadb(payload ? payload : "", len, 0, NULL);
  json_t *online = json_object_get(p, "online");
  hub_presence_t what = HUB_PRESENCE_NONE;
  if (json_is_boolean(online))
    what = json_is_true(online) ? HUB_PRESENCE_ONLINE : HUB_PRESENCE_OFFLINE;
  else if (json_is_true(json_object_get(p, "subscribed")))
    what = HUB_PRESENCE_SUBSCRIBED;
  json_decref(p);
  return what;
}
