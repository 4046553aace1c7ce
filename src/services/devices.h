/* The device registry: supplier manifest import, claim, activation by the supplier,
 * credentials, retirement, commands and the events devices raise. Every change
 * writes its device.* event in the same transaction. Functions return 0 or -ERR_*;
 * resources of another user are -ERR_NOT_FOUND, never -ERR_FORBIDDEN. */
#ifndef IOTFIN_SERVICES_DEVICES_H
#define IOTFIN_SERVICES_DEVICES_H

#include <jansson.h>
#include <stdbool.h>

#include "app.h"
#include "services/idempotency.h"
#include "store/store.h"

/* True when serial is 4-64 characters of [A-Za-z0-9-]. */
bool devices_serial_valid(const char *serial);
/* Why item ({serial, model?}) cannot be imported, or NULL when it can. */
const char *devices_item_problem(json_t *item);
/* Imports items (an array of valid {serial, model?}; borrowed) in one transaction.
 * Serials already known are counted as duplicates, not imported again. */
int devices_import(app_t *app, json_t *items, int *imported, int *duplicates);

/* Claims serial for user_id: -ERR_UNKNOWN_SERIAL, -ERR_ALREADY_CLAIMED. With idem,
 * the 202 answer is recorded under its key in the claim's transaction. */
int devices_claim(app_t *app, const char *user_id, const char *serial, idem_pending_t *idem,
                  json_t **out);
/* The device if user_id owns it (user_id NULL: any owner), as JSON text (malloc'd,
 * its length in *len): the API's hottest read answers with it as it is. */
int devices_get(app_t *app, const char *user_id, const char *id, char **json, size_t *len);
/* The user's devices after cursor (a device id), at most limit. */
int devices_list(app_t *app, const char *user_id, const char *cursor, int limit, json_t **items,
                 char **next);
/* Retires the device, revokes its tokens; *out is the retired device. */
int devices_retire(app_t *app, const char *user_id, const char *id, json_t **out);
/* Issues MQTT credentials for an active device (-ERR_DEVICE_NOT_ACTIVE). */
int devices_credentials(app_t *app, const char *user_id, const char *id, json_t **out);

/* The supplier's answer for a claimed device: active with external_id, or failed. */
int devices_activate(app_t *app, const char *id, const char *external_id);
int devices_fail(app_t *app, const char *id, const char *reason);

/* Commands. */
/* Queues a command; its 202 answer comes as JSON text (malloc'd, its length in *len)
 * and, with idem, is recorded in the same transaction. */
int devices_command_create(app_t *app, const char *user_id, const char *id, json_t *body,
                           idem_pending_t *idem, char **json, size_t *len);
int devices_command_get(app_t *app, const char *user_id, const char *id, const char *cid,
                        json_t **out);
/* The device's queued, unexpired commands, oldest first, as the MQTT payloads; an
 * empty array unless the device listens to its commands topic now (whichever
 * instance heard it subscribe: devices_subscribed). */
int devices_commands_pending(app_t *app, const char *id, json_t **out);
/* Records whether the device listens to its commands now; returns 1 when that
 * changed, 0 when it already was so. Presence going offline clears it too. */
int devices_subscribed(app_t *app, const char *id, bool on);
/* queued -> delivered (the broker took it). */
int devices_command_delivered(app_t *app, const char *id, const char *cid);
/* queued|delivered -> succeeded|failed from the device's ack; -ERR_CONFLICT when the
 * command is already final or expired, -ERR_NOT_FOUND when unknown. */
int devices_command_ack(app_t *app, const char *id, const char *cid, const char *status,
                        json_t *result);
/* Expires every command past its deadline; returns how many. */
int devices_commands_expire(app_t *app);

/* Device events: stores {id, type, time?, data} once per (device, id). Returns 1
 * when stored, 0 for a duplicate. */
int devices_event_store(app_t *app, const char *id, json_t *event);
/* The same for n events (of devices ids[i]) in one transaction; returns how many
 * were new. */
int devices_events_store_many(app_t *app, const char *const *ids, json_t *const *events, int n);
int devices_events_list(app_t *app, const char *user_id, const char *id, const char *cursor,
                        int limit, json_t **items, char **next);

/* Presence from the broker: online or not; writes device.connected/disconnected. */
int devices_presence(app_t *app, const char *id, bool online);
/* The status and external id of a device (for the hub), or -ERR_NOT_FOUND. */
int devices_status(app_t *app, const char *id, char status[16], char external_id[128]);
/* Sessions of retired or revoked devices whose tokens have not expired yet, as
 * {session_ids: [...], device_ids: [...]} for the broker plugin. */
int devices_revoked_sessions(app_t *app, json_t **out);

#endif
