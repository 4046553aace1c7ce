/* Writes CloudEvents into the event log inside the caller's transaction. */
#include "services/events.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "core/errors.h"
#include "core/jsontext.h"
#include "core/timeutil.h"
#include "services/catalogue.h"

static _Atomic uint64_t recorded;

uint64_t events_recorded(void) { return atomic_load(&recorded); }

int events_record(store_tx_t *tx, const char *type, const char *subject, json_t *data,
                  char id_out[IDS_UUID_LEN]) {
  int rc = catalogue_check(type, data);
  if (rc < 0) {
    json_decref(data);
    return rc;
  }
  char id[IDS_UUID_LEN], ts[32];
  ids_uuid7(id);
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  char *d = json_text(data, NULL);
  json_decref(data);
  if (!d) return -ERR_INTERNAL;
  store_rows_t *rows = NULL;
  const char *queue = NULL, *group = NULL;
  if (store_tx_writing_ctes(tx) && bus_single_fanout(type, subject, &queue, &group)) {
    /* The event and its one queue row in one statement (a round trip fewer on
     * PostgreSQL); the same rows as the two statements below. */
    int64_t now = time_now_ms();
    /* Nothing here can conflict (a fresh UUIDv7, an identity): sent without waiting. */
    rc = store_exec_nowait(tx,
                           "WITH e AS (INSERT INTO events (id, type, source, subject, time, data) "
                           "VALUES (?, ?, ?, ?, ?, ?) RETURNING seq) "
                           "INSERT INTO queue_messages (queue, event_seq, group_key, "
                           "visible_at_ms, created_at_ms) SELECT ?, seq, ?, ?, ? FROM e",
                           "ssssssssii", id, type, "/iotfin", subject, ts, d, queue, group, now,
                           now);
    free(d);
    if (rc < 0) return rc;
    rc = bus_fanout_written(tx);
  } else {
    /* SQLite names the row it wrote without RETURNING, which costs it as much again
     * as the insert itself; PostgreSQL needs RETURNING. */
    bool rowids = store_last_rowid(tx) >= 0;
    rc = store_exec(tx, rowids ? NULL : &rows,
                    rowids ? "INSERT INTO events (id, type, source, subject, time, data) "
                             "VALUES (?, ?, ?, ?, ?, ?)"
                           : "INSERT INTO events (id, type, source, subject, time, data) "
                             "VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
                    "ssssss", id, type, "/iotfin", subject, ts, d);
    free(d);
    if (rc < 0) return rc;
    int64_t seq = rowids ? store_last_rowid(tx) : store_rows_int(rows, 0, 0);
    store_rows_free(&rows);
    /* Fan-out in the same transaction: the outbox and the queues are one write. */
    rc = bus_fanout(tx, seq, type, subject);
  }
  if (rc < 0) return rc;
  atomic_fetch_add(&recorded, 1);
  /* Event streams on other instances look at once rather than at their next poll. */
  if ((rc = store_notify(tx, "events", NULL)) < 0) return rc;
  if (id_out) memcpy(id_out, id, IDS_UUID_LEN);
  return 0;
}

json_t *events_row_to_json(const store_rows_t *rows, int row) {
  json_t *data = json_loads(store_rows_text(rows, row, 6), 0, NULL);
  return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o}", "specversion", "1.0", "id",
                   store_rows_text(rows, row, 1), "source", store_rows_text(rows, row, 3), "type",
                   store_rows_text(rows, row, 2), "time", store_rows_text(rows, row, 5), "subject",
                   store_rows_text(rows, row, 4), "datacontenttype", "application/json", "data",
                   data ? data : json_object());
}
