/* iotfin's side of the spool (src/hub/spool_format.h): the broker plugin writes every
 * QoS 1 device event and command ack to disk before the device sees its PUBACK; this
 * module applies the segments to the store, so a message acknowledged by a broker that
 * died, or while iotfin was down, is stored all the same. Applying is idempotent: an
 * event is stored once per (device, id), a final command state is never changed, so a
 * record that also arrived over MQTT costs a lookup and nothing else.
 *
 * Called by the broker supervisor (src/hub/broker.c): before each broker start (every
 * segment, so old messages are stored before the device can send newer ones) and every
 * second while it runs (closed segments only). One caller at a time. */
#ifndef IOTFIN_HUB_SPOOL_H
#define IOTFIN_HUB_SPOOL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "app.h"

/* What a call applies: every segment (no broker appends: each is deleted once
 * stored); the closed ones (a live broker appends to the newest: left alone); or
 * all of them while a live broker appends, keeping the newest file (an instance
 * taking over device messages first stores what its predecessor may not have). */
typedef enum { HUB_SPOOL_ALL, HUB_SPOOL_CLOSED, HUB_SPOOL_CATCH_UP } hub_spool_mode_t;

/* Applies the segments in dir oldest first and deletes each one once everything in
 * it is committed (see the modes). Records already stored are skipped (an event is
 * stored once per device and id; an ack to a final command changes nothing).
 * Returns the number of records applied, or a negative error when the store failed
 * (the segment stays for the next call). */
int hub_spool_apply(app_t *app, const char *dir, hub_spool_mode_t mode);

/* Parses a device event payload {id, type, time?, data: object}; a new reference, or
 * NULL when malformed (with a reason in *why). Shared with the hub's MQTT path. */
json_t *hub_event_parse(const void *payload, size_t len, const char **why);

#endif
