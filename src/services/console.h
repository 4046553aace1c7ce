/* Read models of the operator console that no other service offers: counts for
 * the overview, one device found by id or serial with its recent events and
 * commands, and the newest events of the log. Reads only; any thread. Each
 * function returns 0 and a new JSON value in *out (the caller owns it), or a
 * negative error. */
#ifndef IOTFIN_SERVICES_CONSOLE_H
#define IOTFIN_SERVICES_CONSOLE_H

#include <jansson.h>

#include "app.h"

/* {devices: {total, online, active}, event_seq}: event_seq is the newest event's
 * position in the log, so two readings a known time apart give events per second. */
int console_counts(app_t *app, json_t **out);
/* The device whose id or serial is key, claimed or not: {device: {id, serial,
 * model, status, owner_id, external_id, online, last_seen_at, created_at,
 * activated_at}, events: [...], commands: [...], log: [...]}, each list newest
 * first and at most `recent` long; -ERR_NOT_FOUND when there is none. */
int console_device(app_t *app, const char *key, int recent, json_t **out);
/* The newest events of the log, newest first, at most limit: type is an exact
 * type or a prefix ending in '*' ("device.*"), subject exact; NULL for any. */
int console_events_recent(app_t *app, const char *type, const char *subject, int limit,
                          json_t **out);
/* The SQL LIKE pattern for a type filter (exact, or prefix ending in '*'), with
 * LIKE's own characters escaped by '\'; writes "" and returns -1 when it does not
 * fit in cap. */
int console_type_pattern(const char *type, char *out, size_t cap);

#endif
