/* The operator console's read models (console.h). Plain queries over the tables
 * the device and event services write; the console reuses the bus's own
 * functions for queues, dead letters and alarms. */
#include "services/console.h"

#include <stdio.h>
#include <string.h>

#include "core/errors.h"
#include "services/events.h"

int console_type_pattern(const char *type, char *out, size_t cap) {
  size_t n = 0, len = strlen(type);
  bool prefix = len && type[len - 1] == '*';
  if (prefix) len--;
  for (size_t i = 0; i < len; i++) {
    if (n + 3 >= cap) goto too_long;
    if (type[i] == '%' || type[i] == '_' || type[i] == '\\') out[n++] = '\\';
    out[n++] = type[i];
  }
  if (prefix) {
    if (n + 2 >= cap) goto too_long;
    out[n++] = '%';
  }
  out[n] = 0;
  return 0;
too_long:
  out[0] = 0;
  return -1;
}

static int counts_tx(store_tx_t *tx, void *arg) {
  json_t **out = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT COUNT(*), COALESCE(SUM(CASE WHEN online <> 0 THEN 1 ELSE 0 END), 0), "
                     "COALESCE(SUM(CASE WHEN status = 'active' THEN 1 ELSE 0 END), 0) FROM devices",
                     "");
  if (n < 0) return n;
  json_t *devices = json_pack("{s:I,s:I,s:I}", "total", (json_int_t)store_rows_int(rows, 0, 0),
                              "online", (json_int_t)store_rows_int(rows, 0, 1), "active",
                              (json_int_t)store_rows_int(rows, 0, 2));
  store_rows_free(&rows);
  n = store_exec(tx, &rows, "SELECT COALESCE(MAX(seq), 0) FROM events", "");
  if (n < 0) {
    json_decref(devices);
    return n;
  }
  *out = json_pack("{s:o,s:I}", "devices", devices, "event_seq",
                   (json_int_t)store_rows_int(rows, 0, 0));
  store_rows_free(&rows);
  return 0;
}

int console_counts(app_t *app, json_t **out) {
  *out = NULL;
  return store_read(app->store, counts_tx, out);
}

typedef struct {
  const char *key;
  int recent;
  json_t *out;
} device_q_t;

static json_t *json_text(const char *s) {
  json_t *v = s ? json_loads(s, JSON_DECODE_ANY, NULL) : NULL;
  return v ? v : json_null();
}

static int device_tx(store_tx_t *tx, void *arg) {
  device_q_t *q = arg;
  store_rows_t *rows = NULL;
  int n =
      store_exec(tx, &rows,
                 "SELECT id, serial, model, status, owner_id, external_id, online, "
                 "last_seen_at, created_at, activated_at FROM devices WHERE id = ? OR serial = ? "
                 "ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT 1",
                 "sss", q->key, q->key, q->key);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  char id[128], subject[160];
  snprintf(id, sizeof(id), "%s", store_rows_text(rows, 0, 0));
  snprintf(subject, sizeof(subject), "devices/%s", id);
  json_t *device =
      json_pack("{s:s,s:s,s:s?,s:s,s:s?,s:s?,s:b,s:s?,s:s,s:s?}", "id", id, "serial",
                store_rows_text(rows, 0, 1), "model", store_rows_text(rows, 0, 2), "status",
                store_rows_text(rows, 0, 3), "owner_id", store_rows_text(rows, 0, 4), "external_id",
                store_rows_text(rows, 0, 5), "online", store_rows_int(rows, 0, 6) != 0,
                "last_seen_at", store_rows_text(rows, 0, 7), "created_at",
                store_rows_text(rows, 0, 8), "activated_at", store_rows_text(rows, 0, 9));
  store_rows_free(&rows);
  json_t *events = json_array(), *commands = json_array(), *log = json_array();
  q->out = json_pack("{s:o,s:o,s:o,s:o}", "device", device, "events", events, "commands", commands,
                     "log", log);
  n = store_exec(tx, &rows,
                 "SELECT event_id, type, time, data, received_at FROM device_events "
                 "WHERE device_id = ? ORDER BY seq DESC LIMIT ?",
                 "si", id, (int64_t)q->recent);
  if (n < 0) return n;
  for (int i = 0; i < n; i++)
    json_array_append_new(
        events, json_pack("{s:s,s:s,s:s,s:o,s:s}", "id", store_rows_text(rows, i, 0), "type",
                          store_rows_text(rows, i, 1), "time", store_rows_text(rows, i, 2), "data",
                          json_text(store_rows_text(rows, i, 3)), "received_at",
                          store_rows_text(rows, i, 4)));
  store_rows_free(&rows);
  n = store_exec(tx, &rows,
                 "SELECT id, type, status, created_at, delivered_at, completed_at, expires_at, "
                 "result FROM commands WHERE device_id = ? ORDER BY created_at DESC, id DESC "
                 "LIMIT ?",
                 "si", id, (int64_t)q->recent);
  if (n < 0) return n;
  for (int i = 0; i < n; i++)
    json_array_append_new(
        commands,
        json_pack("{s:s,s:s,s:s,s:s,s:s?,s:s?,s:s,s:o}", "id", store_rows_text(rows, i, 0), "type",
                  store_rows_text(rows, i, 1), "status", store_rows_text(rows, i, 2), "created_at",
                  store_rows_text(rows, i, 3), "delivered_at", store_rows_text(rows, i, 4),
                  "completed_at", store_rows_text(rows, i, 5), "expires_at",
                  store_rows_text(rows, i, 6), "result", json_text(store_rows_text(rows, i, 7))));
  store_rows_free(&rows);
  n = store_exec(tx, &rows,
                 "SELECT " EVENTS_COLUMNS " FROM events WHERE subject = ? ORDER BY seq DESC "
                 "LIMIT ?",
                 "si", subject, (int64_t)q->recent);
  if (n < 0) return n;
  for (int i = 0; i < n; i++)
    json_array_append_new(log, events_row_to_json(rows, i));
  store_rows_free(&rows);
  return 0;
}

int console_device(app_t *app, const char *key, int recent, json_t **out) {
  device_q_t q = {key, recent, NULL};
  int rc = store_read(app->store, device_tx, &q);
  if (rc < 0) {
    json_decref(q.out);
    q.out = NULL;
  }
  *out = q.out;
  return rc < 0 ? rc : 0;
}

typedef struct {
  const char *pattern, *subject;
  int limit;
  json_t *out;
} recent_q_t;

static int recent_tx(store_tx_t *tx, void *arg) {
  recent_q_t *q = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT " EVENTS_COLUMNS " FROM events WHERE (? IS NULL OR type LIKE ? "
                     "ESCAPE '\\') AND (? IS NULL OR subject = ?) ORDER BY seq DESC LIMIT ?",
                     "ssssi", q->pattern, q->pattern, q->subject, q->subject, (int64_t)q->limit);
  if (n < 0) return n;
  q->out = json_array();
  for (int i = 0; i < n; i++)
    json_array_append_new(q->out, events_row_to_json(rows, i));
  store_rows_free(&rows);
  return 0;
}

int console_events_recent(app_t *app, const char *type, const char *subject, int limit,
                          json_t **out) {
  char pattern[200];
  *out = NULL;
  if (type && console_type_pattern(type, pattern, sizeof(pattern)) < 0)
    return -ERR_VALIDATION_FAILED;
  recent_q_t q = {type ? pattern : NULL, subject, limit, NULL};
  int rc = store_read(app->store, recent_tx, &q);
  if (rc < 0) {
    json_decref(q.out);
    return rc;
  }
  *out = q.out;
  return 0;
}
