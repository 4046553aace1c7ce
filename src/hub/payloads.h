/* Parsers for what devices and the broker plugin send on MQTT: command acks,
 * device requests and presence reports (device events: hub_event_parse in spool.h).
 * They are pure functions of the payload bytes, so the hub's threads and the fuzz
 * targets (fuzz/fuzz_hub_*.c) run exactly the same code. Any thread. */
#ifndef IOTFIN_HUB_PAYLOADS_H
#define IOTFIN_HUB_PAYLOADS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* An ack `{"status": "succeeded"|"failed", "result"?: object|null}`. Returns the
 * parsed document (caller owns; *status and *result borrow it, *result is NULL
 * unless an object), or NULL with *why saying what is wrong. */
json_t *hub_ack_parse(const void *payload, size_t len, const char **status, json_t **result,
                      const char **why);

/* A request `{"request_id": <1..128 chars, no / + #>, "data": object}`. Returns the
 * document (caller owns; *request_id and *data borrow it) or NULL when malformed. */
json_t *hub_request_parse(const void *payload, size_t len, const char **request_id, json_t **data);

/* True when s may stand as one MQTT topic level: 1..128 bytes without / + #. */
bool hub_topic_level_safe(const char *s);

/* What a plugin presence report says: `{"online": bool}` wins over
 * `{"subscribed": true}`; anything else says nothing. */
typedef enum {
  HUB_PRESENCE_NONE,
  HUB_PRESENCE_ONLINE,
  HUB_PRESENCE_OFFLINE,
  HUB_PRESENCE_SUBSCRIBED,
} hub_presence_t;
hub_presence_t hub_presence_parse(const void *payload, size_t len);

#endif
