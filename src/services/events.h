/* The event log: every state change records a CloudEvents 1.0 event in the same
 * store transaction as the change (the transactional outbox of DESIGN.md). */
#ifndef IOTFIN_SERVICES_EVENTS_H
#define IOTFIN_SERVICES_EVENTS_H

#include <jansson.h>
#include <stdint.h>

#include "core/ids.h"
#include "store/store.h"

/* Records event `type` about `subject` (e.g. devices/<id>) with data (stolen).
 * Must run inside a store_write() callback. Writes the new event id to id_out
 * when non-NULL. Returns 0, -ERR_VALIDATION_FAILED for a type not in the event
 * catalogue, or a store error. */
/* How many events this process has recorded so far (counted when written, so a
 * transaction undone later still counts): a cheap "anything new?" for a commit hook. */
uint64_t events_recorded(void);
int events_record(store_tx_t *tx, const char *type, const char *subject, json_t *data,
                  char id_out[IDS_UUID_LEN]);

/* Reads one row of the events table (seq, id, type, source, subject, time, data)
 * as a CloudEvent object; the caller owns the reference. */
json_t *events_row_to_json(const store_rows_t *rows, int row);

/* The column list events_row_to_json expects, for SELECT statements. */
#define EVENTS_COLUMNS "seq, id, type, source, subject, time, data"

#endif
