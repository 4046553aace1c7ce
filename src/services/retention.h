/* Retention (CONTRACT section 11, IOTFIN_RETENTION): a background thread, "retention",
 * deletes what is older than the window and no longer needed, in small batches so that
 * the store's writer is never held for long: the event log, device events, finished
 * commands, handler bookkeeping, idempotency keys (kept at least their 24 h promise),
 * webhook ids, and sessions whose lifetime has ended. Events that a queue still holds
 * (pending or dead-lettered), live sessions and unfinished commands stay. */
#ifndef IOTFIN_SERVICES_RETENTION_H
#define IOTFIN_SERVICES_RETENTION_H

#include <stdint.h>

#include "app.h"

typedef struct retention retention_t;

/* Starts the thread; sweeps every window/10 (between 1 s and 60 s). 0 or -ERR_INTERNAL. */
int retention_start(app_t *app, retention_t **out);
/* Stops the thread (a sweep in progress ends after its current batch); sets *r NULL. */
void retention_stop(retention_t **r);
/* One full sweep with now_ms as the present: deletes everything due, batch by batch.
 * Returns the number of rows deleted, or a negative error. Any thread (tests). */
int64_t retention_sweep(app_t *app, int64_t now_ms);

#endif
