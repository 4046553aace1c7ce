/* Device registry operations. Every change writes its device.* event in the same
 * transaction. */
#include "services/devices.h"

#include <stdio.h>
#include <string.h>

#include "core/errors.h"
#include "core/ids.h"
#include "core/timeutil.h"
#include "services/events.h"

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
  if (json_object_size(it) > (size_t)(1 + (model ? 1 : 0))) return "only serial and model are allowed";
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
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
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
    snprintf(subject, sizeof(subject), "devices/%s", id);
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
