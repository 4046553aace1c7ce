/* Device registry operations. Each public function is one store transaction (a
 * write for changes, a read for queries) and replies with the contract's JSON. */
#include "services/devices.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/ids.h"
#include "core/jsontext.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "services/events.h"
#include "services/sessions.h"
#include "store/rowjson.h"

#define DEVICE_COLUMNS                                                                             \
  "id, serial, model, status, external_id, online, last_seen_at, created_at, activated_at, "       \
  "owner_id"

/* The first nine of DEVICE_COLUMNS, as the API shows a device. */
static const row_field_t DEVICE_FIELDS[] = {
    {"id", ROW_STRING},           {"serial", ROW_STRING},
    {"model", ROW_STRING},        {"status", ROW_STRING},
    {"external_id", ROW_STRING},  {"online", ROW_BOOL},
    {"last_seen_at", ROW_STRING}, {"created_at", ROW_STRING},
    {"activated_at", ROW_STRING}, {NULL, ROW_STRING}};

static json_t *device_json(const store_rows_t *r, int i) { return row_json(DEVICE_FIELDS, r, i); }

static void now_ts(char ts[32]) { time_format_rfc3339(time_now_ms(), ts, 32); }

static void subject_of(const char *id, char out[80]) { snprintf(out, 80, "devices/%s", id); }

bool devices_serial_valid(const char *s) {
  size_t n = strlen(s);
  if (n < 4 || n > 64) return false;
  for (; *s; s++)
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
          *s == '-'))
      return false;
  return true;
}

const char *devices_item_problem(json_t *it) {
  json_t *serial = json_object_get(it, "serial"), *model = json_object_get(it, "model");
  if (!json_is_object(it)) return "must be an object with serial and model";
  if (!json_is_string(serial)) return "serial is required and must be a string";
  if (!devices_serial_valid(json_string_value(serial)))
    return "serial must be 4-64 characters of A-Z, a-z, 0-9 and -";
  if (model && !json_is_null(model) && (!json_is_string(model) || json_string_length(model) > 64))
    return "model must be a string of at most 64 characters";
  if (json_object_size(it) > (size_t)(1 + (model ? 1 : 0)))
    return "only serial and model are allowed";
  return NULL;
}

typedef struct {
  json_t *items; /* borrowed, all valid */
  int imported, duplicates;
} import_ctx_t;

static int import_tx(store_tx_t *tx, void *arg) {
  import_ctx_t *c = arg;
  c->imported = c->duplicates = 0;
  char ts[32];
  now_ts(ts);
  size_t i;
  json_t *it;
  json_array_foreach(c->items, i, it) {
    const char *serial = json_string_value(json_object_get(it, "serial"));
    const char *model = json_string_value(json_object_get(it, "model"));
    char id[IDS_UUID_LEN], subject[80];
    ids_uuid7(id);
    int rc = store_exec(tx, NULL,
                        "INSERT INTO devices (id, serial, model, status, created_at) "
                        "VALUES (?, ?, ?, 'unclaimed', ?) ON CONFLICT (serial) DO NOTHING",
                        "ssss", id, serial, model, ts);
    if (rc < 0) return rc;
    if (rc == 0) {
      c->duplicates++;
      continue;
    }
    subject_of(id, subject);
    json_t *data = json_pack("{s:s,s:s,s:o}", "device_id", id, "serial", serial, "model",
                             model ? json_string(model) : json_null());
    rc = events_record(tx, "device.imported", subject, data, NULL);
    if (rc < 0) return rc;
    c->imported++;
  }
  return 0;
}

int devices_import(app_t *app, json_t *items, int *imported, int *duplicates) {
  import_ctx_t c = {items, 0, 0};
  int rc = json_array_size(items) ? store_write(app->store, import_tx, &c) : 0;
  *imported = c.imported;
  *duplicates = c.duplicates;
  return rc;
}

/* --- reads ------------------------------------------------------------------ */

typedef struct {
  const char *user_id, *id, *cursor;
  int limit;
  json_t *out;
  char *next, *text;
  size_t text_len;
} q_t;

static int get_tx(store_tx_t *tx, void *arg) {
  q_t *q = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT " DEVICE_COLUMNS " FROM devices WHERE id = ? AND owner_id IS NOT NULL "
                     "AND (? IS NULL OR owner_id = ?)",
                     "sss", q->id, q->user_id, q->user_id);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  q->text = row_text(DEVICE_FIELDS, rows, 0, &q->text_len);
  store_rows_free(&rows);
  return q->text ? 0 : -ERR_INTERNAL;
}

int devices_get(app_t *app, const char *user_id, const char *id, char **json, size_t *len) {
  q_t q = {.user_id = user_id, .id = id};
  int rc = store_read(app->store, get_tx, &q);
  *json = q.text;
  *len = q.text_len;
  return rc;
}

static int list_tx(store_tx_t *tx, void *arg) {
  q_t *q = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT " DEVICE_COLUMNS " FROM devices WHERE owner_id = ? AND id > ? "
                     "ORDER BY id LIMIT ?",
                     "ssi", q->user_id, q->cursor ? q->cursor : "", (int64_t)q->limit + 1);
  if (n < 0) return n;
  q->out = json_array();
  for (int i = 0; i < n && i < q->limit; i++) {
    json_array_append_new(q->out, device_json(rows, i));
    if (i == q->limit - 1 && n > q->limit) q->next = strdup(store_rows_text(rows, i, 0));
  }
  store_rows_free(&rows);
  return 0;
}

int devices_list(app_t *app, const char *user_id, const char *cursor, int limit, json_t **items,
                 char **next) {
  q_t q = {.user_id = user_id, .cursor = cursor, .limit = limit};
  int rc = store_read(app->store, list_tx, &q);
  *items = q.out;
  *next = q.next;
  return rc;
}

/* --- claim, activation, retirement ------------------------------------------ */

typedef struct {
  const char *user_id, *serial, *id, *external_id, *reason;
  char device_id[IDS_UUID_LEN];
  json_t *out;
  idem_pending_t *idem;
} w_t;

static int load_device(store_tx_t *tx, const char *where, const char *arg, json_t **out,
                       char owner[80]) {
  char sql[300];
  snprintf(sql, sizeof(sql), "SELECT " DEVICE_COLUMNS " FROM devices WHERE %s = ?", where);
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, sql, "s", arg);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  *out = device_json(rows, 0);
  if (owner)
    snprintf(owner, 80, "%s", store_rows_text(rows, 0, 9) ? store_rows_text(rows, 0, 9) : "");
  store_rows_free(&rows);
  return 0;
}

static int claim_tx(store_tx_t *tx, void *arg) {
  w_t *w = arg;
  /* A failed batch may run this again: the answer of a try that did not commit goes. */
  json_decref(w->out);
  w->out = NULL;
  json_t *dev = NULL;
  char owner[80];
  int rc = load_device(tx, "serial", w->serial, &dev, owner);
  if (rc == -ERR_NOT_FOUND) return -ERR_UNKNOWN_SERIAL;
  if (rc < 0) return rc;
  const char *id = json_string_value(json_object_get(dev, "id"));
  snprintf(w->device_id, sizeof(w->device_id), "%s", id);
  json_decref(dev);
  if (owner[0]) return -ERR_ALREADY_CLAIMED;
  char ts[32], subject[80];
  now_ts(ts);
  rc = store_exec(tx, NULL,
                  "UPDATE devices SET owner_id = ?, status = 'provisioning', claimed_at = ? "
                  "WHERE id = ? AND owner_id IS NULL",
                  "sss", w->user_id, ts, w->device_id);
  if (rc < 0) return rc;
  if (rc == 0) return -ERR_ALREADY_CLAIMED;
  subject_of(w->device_id, subject);
  rc = events_record(tx, "device.claimed", subject,
                     json_pack("{s:s,s:s,s:s}", "device_id", w->device_id, "serial", w->serial,
                               "owner_id", w->user_id),
                     NULL);
  if (rc < 0) return rc;
  rc = load_device(tx, "id", w->device_id, &w->out, NULL);
  return rc < 0 ? rc : idem_record_tx(tx, w->idem, 202, w->out);
}

int devices_claim(app_t *app, const char *user_id, const char *serial, idem_pending_t *idem,
                  json_t **out) {
  w_t w = {.user_id = user_id, .serial = serial, .idem = idem};
  int rc = store_write(app->store, claim_tx, &w);
  if (rc < 0) {
    json_decref(w.out); /* built before a commit that failed */
    w.out = NULL;
  }
  *out = w.out;
  if (rc == 0) log_info("devices", "device %s (%s) claimed by %s", w.device_id, serial, user_id);
  return rc;
}

static int activate_tx(store_tx_t *tx, void *arg) {
  w_t *w = arg;
  char ts[32], subject[80];
  now_ts(ts);
  int rc = store_exec(tx, NULL,
                      "UPDATE devices SET status = 'active', external_id = ?, activated_at = ? "
                      "WHERE id = ? AND status = 'provisioning'",
                      "sss", w->external_id, ts, w->id);
  if (rc <= 0) return rc; /* already decided: nothing to do */
  subject_of(w->id, subject);
  store_rows_t *rows = NULL;
  rc = store_exec(tx, &rows,
                  "SELECT d.serial, d.owner_id, u.email FROM devices d LEFT JOIN users u "
                  "ON u.id = d.owner_id WHERE d.id = ?",
                  "s", w->id);
  if (rc < 0) return rc;
  json_t *data = json_pack("{s:s,s:s,s:s?,s:s?,s:s?}", "device_id", w->id, "external_id",
                           w->external_id, "serial", store_rows_text(rows, 0, 0), "owner_id",
                           store_rows_text(rows, 0, 1), "owner_email", store_rows_text(rows, 0, 2));
  store_rows_free(&rows);
  return events_record(tx, "device.activated", subject, data, NULL);
}

int devices_activate(app_t *app, const char *id, const char *external_id) {
  w_t w = {.id = id, .external_id = external_id};
  int rc = store_write(app->store, activate_tx, &w);
  if (rc > 0) log_info("devices", "device %s active (supplier id %s)", id, external_id);
  return rc < 0 ? rc : 0;
}

static int fail_tx(store_tx_t *tx, void *arg) {
  w_t *w = arg;
  char subject[80];
  int rc = store_exec(
      tx, NULL, "UPDATE devices SET status = 'failed' WHERE id = ? AND status = 'provisioning'",
      "s", w->id);
  if (rc <= 0) return rc;
  subject_of(w->id, subject);
  return events_record(tx, "device.provisioning.failed", subject,
                       json_pack("{s:s,s:s}", "device_id", w->id, "reason", w->reason), NULL);
}

int devices_fail(app_t *app, const char *id, const char *reason) {
  w_t w = {.id = id, .reason = reason};
  int rc = store_write(app->store, fail_tx, &w);
  if (rc > 0) log_warn("devices", "device %s provisioning failed: %s", id, reason);
  return rc < 0 ? rc : 0;
}

static int owned(store_tx_t *tx, const char *user_id, const char *id, char status[16]) {
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT status FROM devices WHERE id = ? AND owner_id = ?", "ss",
                     id, user_id);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  if (status) snprintf(status, 16, "%s", store_rows_text(rows, 0, 0));
  store_rows_free(&rows);
  return 0;
}

static int retire_tx(store_tx_t *tx, void *arg) {
  w_t *w = arg;
  char status[16], subject[80];
  int rc = owned(tx, w->user_id, w->id, status);
  if (rc < 0) return rc;
  if (strcmp(status, "retired") != 0) {
    /* Its connection ends with the retirement: say so now, since the broker's
     * report will find the device already offline. */
    store_rows_t *on = NULL;
    int was_online =
        store_exec(tx, &on, "SELECT 1 FROM devices WHERE id = ? AND online = 1", "s", w->id);
    store_rows_free(&on);
    if (was_online < 0) return was_online;
    rc = store_exec(
        tx, NULL, "UPDATE devices SET status = 'retired', online = 0, subscribed = 0 WHERE id = ?",
        "s", w->id);
    if (rc < 0) return rc;
    subject_of(w->id, subject);
    if (was_online > 0) {
      rc = events_record(tx, "device.disconnected", subject,
                         json_pack("{s:s,s:s}", "device_id", w->id, "reason", "retired"), NULL);
      if (rc < 0) return rc;
    }
    rc = events_record(tx, "device.retired", subject, json_pack("{s:s}", "device_id", w->id), NULL);
    if (rc < 0) return rc;
    store_rows_t *rows = NULL;
    int n =
        store_exec(tx, &rows, "SELECT id FROM sessions WHERE device_id = ? AND revoked_at IS NULL",
                   "s", w->id);
    for (int i = 0; i < n; i++) {
      rc = sessions__revoke(tx, store_rows_text(rows, i, 0), "device_retired");
      if (rc < 0) break;
    }
    store_rows_free(&rows);
    if (rc < 0) return rc;
  }
  return load_device(tx, "id", w->id, &w->out, NULL);
}

int devices_retire(app_t *app, const char *user_id, const char *id, json_t **out) {
  w_t w = {.user_id = user_id, .id = id};
  int rc = store_write(app->store, retire_tx, &w);
  *out = w.out;
  return rc;
}

typedef struct {
  const char *user_id, *id, *sid;
  int64_t expires_ms;
} cred_t;

static int cred_tx(store_tx_t *tx, void *arg) {
  cred_t *c = arg;
  char status[16], ts[32];
  int rc = owned(tx, c->user_id, c->id, status);
  if (rc < 0) return rc;
  if (strcmp(status, "active") != 0) return -ERR_DEVICE_NOT_ACTIVE;
  now_ts(ts);
  rc = sessions__insert(tx, c->sid, "device", NULL, c->expires_ms);
  if (rc < 0) return rc;
  rc = store_exec(tx, NULL, "UPDATE sessions SET device_id = ? WHERE id = ?", "ss", c->id, c->sid);
  return rc < 0 ? rc : 0;
}

int devices_credentials(app_t *app, const char *user_id, const char *id, json_t **out) {
  *out = NULL;
  char sid[IDS_UUID_LEN];
  ids_uuid7(sid);
  int64_t ttl = app->cfg->device_token_ttl_s;
  cred_t c = {user_id, id, sid, time_now_ms() + ttl * 1000};
  int rc = store_write(app->store, cred_tx, &c);
  if (rc < 0) return rc;
  char *tok;
  rc = sessions_sign(app, sid, id, "device", ttl, &tok);
  if (rc < 0) return rc;
  char exp[32], prefix[80];
  time_format_rfc3339(c.expires_ms, exp, sizeof(exp));
  snprintf(prefix, sizeof(prefix), "devices/%s/", id);
  *out = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "client_id", id, "username", id, "password", tok,
                   "mqtt_url", app->mqtt_url, "topic_prefix", prefix, "expires_at", exp);
  free(tok);
  return 0;
}

/* --- commands --------------------------------------------------------------- */

#define COMMAND_COLUMNS                                                                            \
  "id, type, payload, status, result, created_at, delivered_at, completed_at, expires_at, "        \
  "device_id"

static json_t *command_json(const store_rows_t *r, int i) {
  json_t *payload = json_loads(store_rows_text(r, i, 2), 0, NULL);
  json_t *result = store_rows_text(r, i, 4) ? json_loads(store_rows_text(r, i, 4), 0, NULL) : NULL;
  return json_pack("{s:s,s:s,s:o,s:s,s:o,s:s,s:s?,s:s?,s:s}", "id", store_rows_text(r, i, 0),
                   "type", store_rows_text(r, i, 1), "payload", payload ? payload : json_object(),
                   "status", store_rows_text(r, i, 3), "result", result ? result : json_null(),
                   "created_at", store_rows_text(r, i, 5), "delivered_at", store_rows_text(r, i, 6),
                   "completed_at", store_rows_text(r, i, 7), "expires_at",
                   store_rows_text(r, i, 8));
}

typedef struct {
  const char *user_id, *id, *cid, *type, *status;
  json_t *payload, *result, *out;
  char *text; /* a new command's answer, as JSON text */
  size_t text_len;
  int64_t ttl_s;
  idem_pending_t *idem;
} cmd_t;

static int load_command(store_tx_t *tx, const char *id, const char *cid, json_t **out) {
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT " COMMAND_COLUMNS " FROM commands WHERE id = ? AND device_id = ?",
                     "ss", cid, id);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  *out = command_json(rows, 0);
  store_rows_free(&rows);
  return 0;
}

static int command_create_tx(store_tx_t *tx, void *arg) {
  cmd_t *c = arg;
  /* A failed batch may run this again: the answer of a try that did not commit goes. */
  free(c->text);
  c->text = NULL;
  char status[16], ts[32], exp[32], subject[80];
  int rc = owned(tx, c->user_id, c->id, status);
  if (rc < 0) return rc;
  if (strcmp(status, "active") != 0) return -ERR_DEVICE_NOT_ACTIVE;
  int64_t now = time_now_ms(), exp_ms = now + c->ttl_s * 1000;
  time_format_rfc3339(now, ts, sizeof(ts));
  time_format_rfc3339(exp_ms, exp, sizeof(exp));
  size_t payload_len = 0;
  char *payload = json_text(c->payload, &payload_len);
  /* A fresh UUIDv7 for a device this user owns: nothing to conflict with. */
  rc = store_exec_nowait(tx,
                         "INSERT INTO commands (id, device_id, type, payload, status, created_at, "
                         "expires_at, expires_at_ms) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                         "ssssssi", c->cid, c->id, c->type, payload, ts, exp, exp_ms);
  if (rc >= 0) {
    subject_of(c->id, subject);
    rc = events_record(
        tx, "device.command.queued", subject,
        json_pack("{s:s,s:s,s:s}", "device_id", c->id, "command_id", c->cid, "type", c->type),
        NULL);
  }
  if (rc < 0) {
    free(payload);
    return rc;
  }
  /* The answer is what was just written, in command_json's shape, without a read
   * that would wait for the writes above; written as text from the payload's text
   * already made for the INSERT, rather than built as a value and dumped. */
  json_buf_t b = {0};
  JSON_BUF_LIT(&b, "{\"id\":");
  json_buf_string(&b, c->cid);
  JSON_BUF_LIT(&b, ",\"type\":");
  json_buf_string(&b, c->type);
  JSON_BUF_LIT(&b, ",\"payload\":");
  if (payload)
    json_buf_raw(&b, payload, payload_len);
  else
    JSON_BUF_LIT(&b, "{}");
  JSON_BUF_LIT(&b, ",\"status\":\"queued\",\"result\":null,\"created_at\":");
  json_buf_string(&b, ts);
  JSON_BUF_LIT(&b, ",\"delivered_at\":null,\"completed_at\":null,\"expires_at\":");
  json_buf_string(&b, exp);
  JSON_BUF_LIT(&b, "}");
  free(payload);
  c->text = json_buf_finish(&b, &c->text_len);
  return c->text ? idem_record_text_tx(tx, c->idem, 202, c->text) : -ERR_INTERNAL;
}

int devices_command_create(app_t *app, const char *user_id, const char *id, json_t *body,
                           idem_pending_t *idem, char **json, size_t *len) {
  char cid[IDS_UUID_LEN];
  ids_uuid7(cid);
  json_t *ttl = json_object_get(body, "ttl_seconds");
  cmd_t c = {.user_id = user_id,
             .id = id,
             .cid = cid,
             .type = json_string_value(json_object_get(body, "type")),
             .payload = json_object_get(body, "payload"),
             .ttl_s = ttl ? json_integer_value(ttl) : app->cfg->command_ttl_s,
             .idem = idem};
  int rc = store_write(app->store, command_create_tx, &c);
  if (rc < 0) {
    /* The callback may have built the answer before the commit failed (disk full). */
    free(c.text);
    c.text = NULL;
  }
  *json = c.text;
  *len = c.text_len;
  return rc;
}

static int command_get_tx(store_tx_t *tx, void *arg) {
  cmd_t *c = arg;
  int rc = owned(tx, c->user_id, c->id, NULL);
  if (rc < 0) return rc;
  return load_command(tx, c->id, c->cid, &c->out);
}

int devices_command_get(app_t *app, const char *user_id, const char *id, const char *cid,
                        json_t **out) {
  cmd_t c = {.user_id = user_id, .id = id, .cid = cid};
  int rc = store_read(app->store, command_get_tx, &c);
  *out = c.out;
  return rc;
}

static int pending_tx(store_tx_t *tx, void *arg) {
  cmd_t *c = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT c.id, c.type, c.payload, c.created_at, c.expires_at FROM commands c "
                     "JOIN devices d ON d.id = c.device_id AND d.subscribed = 1 "
                     "WHERE c.device_id = ? AND c.status = 'queued' AND c.expires_at_ms > ? "
                     "ORDER BY c.created_at, c.id",
                     "si", c->id, time_now_ms());
  if (n < 0) return n;
  c->out = json_array();
  for (int i = 0; i < n; i++) {
    json_t *payload = json_loads(store_rows_text(rows, i, 2), 0, NULL);
    json_array_append_new(
        c->out, json_pack("{s:s,s:s,s:o,s:s,s:s}", "id", store_rows_text(rows, i, 0), "type",
                          store_rows_text(rows, i, 1), "payload", payload ? payload : json_object(),
                          "issued_at", store_rows_text(rows, i, 3), "expires_at",
                          store_rows_text(rows, i, 4)));
  }
  store_rows_free(&rows);
  return 0;
}

int devices_commands_pending(app_t *app, const char *id, json_t **out) {
  cmd_t c = {.id = id};
  int rc = store_read(app->store, pending_tx, &c);
  *out = c.out;
  return rc;
}

static int delivered_tx(store_tx_t *tx, void *arg) {
  cmd_t *c = arg;
  char ts[32], subject[80];
  now_ts(ts);
  int rc = store_exec(tx, NULL,
                      "UPDATE commands SET status = 'delivered', delivered_at = ? WHERE id = ? "
                      "AND device_id = ? AND status = 'queued'",
                      "sss", ts, c->cid, c->id);
  if (rc <= 0) return rc;
  subject_of(c->id, subject);
  return events_record(tx, "device.command.delivered", subject,
                       json_pack("{s:s,s:s}", "device_id", c->id, "command_id", c->cid), NULL);
}

int devices_command_delivered(app_t *app, const char *id, const char *cid) {
  cmd_t c = {.id = id, .cid = cid};
  int rc = store_write(app->store, delivered_tx, &c);
  return rc < 0 ? rc : 0;
}

static int ack_tx(store_tx_t *tx, void *arg) {
  cmd_t *c = arg;
  char ts[32], subject[80];
  now_ts(ts);
  char *result = c->result ? json_text(c->result, NULL) : NULL;
  /* An ack may overtake the broker's confirmation: queued counts as delivered. */
  int rc = store_exec(tx, NULL,
                      "UPDATE commands SET status = ?, result = ?, completed_at = ?, "
                      "delivered_at = COALESCE(delivered_at, ?) WHERE id = ? AND device_id = ? "
                      "AND status IN ('queued', 'delivered') AND expires_at_ms > ?",
                      "ssssssi", c->status, result, ts, ts, c->cid, c->id, time_now_ms());
  free(result);
  if (rc < 0) return rc;
  if (rc == 0) {
    store_rows_t *rows = NULL;
    int n = store_exec(tx, &rows, "SELECT 1 FROM commands WHERE id = ? AND device_id = ?", "ss",
                       c->cid, c->id);
    store_rows_free(&rows);
    return n < 0 ? n : n == 0 ? -ERR_NOT_FOUND : -ERR_CONFLICT;
  }
  subject_of(c->id, subject);
  return events_record(tx, "device.command.completed", subject,
                       json_pack("{s:s,s:s,s:s,s:O?}", "device_id", c->id, "command_id", c->cid,
                                 "status", c->status, "result", c->result),
                       NULL);
}

int devices_command_ack(app_t *app, const char *id, const char *cid, const char *status,
                        json_t *result) {
  cmd_t c = {.id = id, .cid = cid, .status = status, .result = result};
  int rc = store_write(app->store, ack_tx, &c);
  return rc < 0 ? rc : 0;
}

static int expire_tx(store_tx_t *tx, void *arg) {
  int *count = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT id, device_id FROM commands WHERE status IN ('queued', 'delivered') "
                     "AND expires_at_ms <= ? LIMIT 500",
                     "i", time_now_ms());
  if (n < 0) return n;
  char ts[32];
  now_ts(ts);
  int rc = 0;
  for (int i = 0; i < n && rc >= 0; i++) {
    char subject[80];
    const char *cid = store_rows_text(rows, i, 0), *did = store_rows_text(rows, i, 1);
    rc = store_exec(tx, NULL,
                    "UPDATE commands SET status = 'expired', completed_at = ? WHERE id = ?", "ss",
                    ts, cid);
    if (rc < 0) break;
    subject_of(did, subject);
    rc = events_record(tx, "device.command.expired", subject,
                       json_pack("{s:s,s:s}", "device_id", did, "command_id", cid), NULL);
  }
  store_rows_free(&rows);
  *count = n;
  return rc < 0 ? rc : 0;
}

int devices_commands_expire(app_t *app) {
  int count = 0;
  int rc = store_write(app->store, expire_tx, &count);
  return rc < 0 ? rc : count;
}

/* --- device events and presence --------------------------------------------- */

typedef struct {
  const char *id;
  json_t *event;
  int stored;
} ev_t;

static int store_one_event(store_tx_t *tx, ev_t *e);

static int event_tx(store_tx_t *tx, void *arg) { return store_one_event(tx, arg); }

typedef struct {
  ev_t *items;
  int n;
} evs_t;

static int events_tx(store_tx_t *tx, void *arg) {
  evs_t *b = arg;
  for (int i = 0; i < b->n; i++) {
    int rc = store_one_event(tx, &b->items[i]);
    if (rc < 0) return rc;
  }
  return 0;
}

int devices_events_store_many(app_t *app, const char *const *ids, json_t *const *events, int n) {
  ev_t *items = calloc((size_t)n, sizeof(*items));
  if (!items) return -ERR_INTERNAL;
  for (int i = 0; i < n; i++)
    items[i] = (ev_t){ids[i], events[i], 0};
  evs_t b = {items, n};
  int rc = store_write(app->store, events_tx, &b);
  int stored = 0;
  for (int i = 0; i < n; i++)
    stored += items[i].stored;
  free(items);
  return rc < 0 ? rc : stored;
}

static int store_one_event(store_tx_t *tx, ev_t *e) {
  char ts[32], subject[80];
  now_ts(ts);
  const char *eid = json_string_value(json_object_get(e->event, "id"));
  const char *type = json_string_value(json_object_get(e->event, "type"));
  const char *time = json_string_value(json_object_get(e->event, "time"));
  json_t *data = json_object_get(e->event, "data");
  char *d = json_text(data, NULL);
  int rc = store_exec(tx, NULL,
                      "INSERT INTO device_events (device_id, event_id, type, time, data, "
                      "received_at) VALUES (?, ?, ?, ?, ?, ?) "
                      "ON CONFLICT (device_id, event_id) DO NOTHING",
                      "ssssss", e->id, eid, type, time ? time : ts, d, ts);
  free(d);
  if (rc <= 0) return rc;
  e->stored = 1;
  rc = store_exec_nowait(tx, "UPDATE devices SET last_seen_at = ? WHERE id = ?", "ss", ts, e->id);
  if (rc < 0) return rc;
  subject_of(e->id, subject);
  return events_record(tx, "device.event.received", subject,
                       json_pack("{s:s,s:s,s:s,s:s,s:O,s:s}", "device_id", e->id, "event_id", eid,
                                 "type", type, "time", time ? time : ts, "data", data,
                                 "received_at", ts),
                       NULL);
}

int devices_event_store(app_t *app, const char *id, json_t *event) {
  ev_t e = {id, event, 0};
  int rc = store_write(app->store, event_tx, &e);
  return rc < 0 ? rc : e.stored;
}

typedef struct {
  const char *user_id, *id, *cursor;
  int limit;
  json_t *out;
  char *next;
} evq_t;

static int events_list_tx(store_tx_t *tx, void *arg) {
  evq_t *q = arg;
  int rc = owned(tx, q->user_id, q->id, NULL);
  if (rc < 0) return rc;
  store_rows_t *rows = NULL;
  int n =
      store_exec(tx, &rows,
                 "SELECT seq, event_id, type, time, data, received_at FROM device_events "
                 "WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                 "sii", q->id, q->cursor ? strtoll(q->cursor, NULL, 10) : 0, (int64_t)q->limit + 1);
  if (n < 0) return n;
  q->out = json_array();
  for (int i = 0; i < n && i < q->limit; i++) {
    json_t *data = json_loads(store_rows_text(rows, i, 4), 0, NULL);
    json_array_append_new(
        q->out, json_pack("{s:s,s:s,s:s,s:o,s:s}", "id", store_rows_text(rows, i, 1), "type",
                          store_rows_text(rows, i, 2), "time", store_rows_text(rows, i, 3), "data",
                          data ? data : json_object(), "received_at", store_rows_text(rows, i, 5)));
    if (i == q->limit - 1 && n > q->limit) q->next = strdup(store_rows_text(rows, i, 0));
  }
  store_rows_free(&rows);
  return 0;
}

int devices_events_list(app_t *app, const char *user_id, const char *id, const char *cursor,
                        int limit, json_t **items, char **next) {
  evq_t q = {user_id, id, cursor, limit, NULL, NULL};
  int rc = store_read(app->store, events_list_tx, &q);
  *items = q.out;
  *next = q.next;
  return rc;
}

typedef struct {
  const char *id;
  bool online;
} presence_t;

static int presence_tx(store_tx_t *tx, void *arg) {
  presence_t *p = arg;
  char ts[32], subject[80];
  now_ts(ts);
  /* A connection (first or last) starts unsubscribed: commands wait for "subscribed". */
  int rc = store_exec_nowait(
      tx, "UPDATE devices SET subscribed = 0 WHERE id = ? AND subscribed = 1", "s", p->id);
  if (rc < 0) return rc;
  rc = store_exec(tx, NULL,
                  "UPDATE devices SET online = ?, last_seen_at = ? WHERE id = ? AND online != ?",
                  "issi", (int64_t)p->online, ts, p->id, (int64_t)p->online);
  if (rc <= 0) return rc;
  subject_of(p->id, subject);
  return events_record(tx, p->online ? "device.connected" : "device.disconnected", subject,
                       json_pack("{s:s}", "device_id", p->id), NULL);
}

int devices_presence(app_t *app, const char *id, bool online) {
  presence_t p = {id, online};
  int rc = store_write(app->store, presence_tx, &p);
  return rc < 0 ? rc : 0;
}

static int subscribed_tx(store_tx_t *tx, void *arg) {
  presence_t *p = arg;
  return store_exec(tx, NULL, "UPDATE devices SET subscribed = ? WHERE id = ? AND subscribed != ?",
                    "isi", (int64_t)p->online, p->id, (int64_t)p->online);
}

int devices_subscribed(app_t *app, const char *id, bool on) {
  presence_t p = {id, on};
  return store_write(app->store, subscribed_tx, &p);
}

typedef struct {
  const char *id;
  char *status, *external_id;
} st_t;

static int status_tx(store_tx_t *tx, void *arg) {
  st_t *s = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT status, external_id FROM devices WHERE id = ?", "s", s->id);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  snprintf(s->status, 16, "%s", store_rows_text(rows, 0, 0));
  snprintf(s->external_id, 128, "%s",
           store_rows_text(rows, 0, 1) ? store_rows_text(rows, 0, 1) : "");
  store_rows_free(&rows);
  return 0;
}

int devices_status(app_t *app, const char *id, char status[16], char external_id[128]) {
  st_t s = {id, status, external_id};
  return store_read(app->store, status_tx, &s);
}

static int revoked_tx(store_tx_t *tx, void *arg) {
  json_t *out = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT id FROM sessions WHERE tier = 'device' AND revoked_at IS NOT NULL "
                     "AND expires_at_ms > ?",
                     "i", time_now_ms());
  if (n < 0) return n;
  json_t *sids = json_object_get(out, "session_ids");
  for (int i = 0; i < n; i++)
    json_array_append_new(sids, json_string(store_rows_text(rows, i, 0)));
  store_rows_free(&rows);
  n = store_exec(tx, &rows, "SELECT id FROM devices WHERE status = 'retired'", "");
  if (n < 0) return n;
  json_t *dids = json_object_get(out, "device_ids");
  for (int i = 0; i < n; i++)
    json_array_append_new(dids, json_string(store_rows_text(rows, i, 0)));
  store_rows_free(&rows);
  return 0;
}

int devices_revoked_sessions(app_t *app, json_t **out) {
  *out = json_pack("{s:[],s:[]}", "session_ids", "device_ids");
  int rc = store_read(app->store, revoked_tx, *out);
  if (rc < 0) {
    json_decref(*out);
    *out = NULL;
  }
  return rc;
}
