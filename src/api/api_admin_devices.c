/* POST /v1/admin/devices/import: the supplier manifest, as JSON or as CSV with the
 * header `serial,model`. Bad rows are reported by index; good rows are imported. */
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "app.h"
#include "core/errors.h"
#include "services/devices.h"

static const http_field_t device_item_fields[] = {
    {.name = "serial",
     .type = HTTP_T_STRING,
     .required = true,
     .min = 4,
     .max = 64,
     .pattern = "^[A-Za-z0-9-]{4,64}$"},
    {.name = "model", .type = HTTP_T_STRING, .min = 0, .max = 64},
    {0},
};

static const http_field_t import_fields[] = {
    {.name = "devices",
     .type = HTTP_T_ARRAY,
     .required = true,
     .items = device_item_fields,
     .description = "Serials from the supplier manifest."},
    {0},
};

const http_body_t api_admin_devices_import_body = {import_fields, true, false};

/* Parses CSV with a `serial,model` header into {serial, model} items. A row's
 * index counts data rows from 0, as JSON items do; rows with too many columns are
 * reported in invalid and left out. */
static int parse_csv(const char *body, size_t len, json_t *items, json_t *invalid,
                     const char **why) {
  /* strndup would stop at a NUL and import the rows before it as if that were all. */
  if (memchr(body, 0, len)) {
    *why = "the CSV body contains a NUL byte";
    return -ERR_VALIDATION_FAILED;
  }
  char *copy = strndup(body, len);
  if (!copy) return -ERR_INTERNAL;
  int rc = 0, row = -1;
  char *save = NULL;
  for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    size_t l = strlen(line);
    if (l && line[l - 1] == '\r') line[--l] = 0;
    if (row == -1) {
      if (strcmp(line, "serial,model") != 0 && strcmp(line, "serial") != 0) {
        *why = "the first line must be the header serial,model";
        rc = -ERR_VALIDATION_FAILED;
        break;
      }
      row = 0;
      continue;
    }
    if (l == 0) continue;
    char *comma = strchr(line, ',');
    if (comma && strchr(comma + 1, ',')) {
      json_array_append_new(invalid, json_pack("{s:i,s:s}", "index", row++, "reason",
                                               "expected two columns: serial,model"));
      continue;
    }
    if (comma) *comma = 0;
    /* jansson refuses strings that are not UTF-8; such a row is reported, not lost. */
    json_t *it = json_pack("{s:s,s:i}", "serial", line, "_index", row);
    json_t *model = comma && comma[1] ? json_string(comma + 1) : NULL;
    if (!it || (comma && comma[1] && !model)) {
      json_decref(it);
      json_decref(model);
      json_array_append_new(invalid,
                            json_pack("{s:i,s:s}", "index", row++, "reason", "not valid UTF-8"));
      continue;
    }
    row++;
    if (model) json_object_set_new(it, "model", model);
    json_array_append_new(items, it);
  }
  if (rc == 0 && row == -1) {
    *why = "the CSV body is empty; the first line must be the header serial,model";
    rc = -ERR_VALIDATION_FAILED;
  }
  free(copy);
  return rc;
}

int api_admin_devices_import(http_req_t *req) {
  json_t *items, *invalid = json_array(), *valid = json_array();
  bool csv = http_req_is_csv(req);
  if (csv) {
    size_t len;
    const char *body = http_req_body(req, &len);
    const char *why = NULL;
    items = json_array();
    int rc = parse_csv(body, len, items, invalid, &why);
    if (rc < 0) {
      json_decref(items);
      json_decref(invalid);
      json_decref(valid);
      if (rc != -ERR_VALIDATION_FAILED) return rc;
      return http_reply_problem(req, ERR_VALIDATION_FAILED, why,
                                json_pack("[{s:s,s:s}]", "field", "body", "message", why));
    }
  } else {
    items = json_incref(json_object_get(http_req_json(req), "devices"));
  }
  size_t i;
  json_t *it;
  json_array_foreach(items, i, it) {
    /* CSV rows carry their row number; JSON items are numbered by position. */
    json_int_t index = (json_int_t)i;
    json_t *row = csv ? json_object_get(it, "_index") : NULL;
    if (row) {
      index = json_integer_value(row);
      json_object_del(it, "_index");
    }
    const char *reason = devices_item_problem(it);
    if (reason)
      json_array_append_new(invalid, json_pack("{s:I,s:s}", "index", index, "reason", reason));
    else
      json_array_append(valid, it);
  }
  json_decref(items);
  int imported = 0, duplicates = 0;
  int rc = devices_import(http_req_app(req), valid, &imported, &duplicates);
  json_decref(valid);
  if (rc < 0) {
    json_decref(invalid);
    return rc;
  }
  return http_reply_json(req, 200,
                         json_pack("{s:i,s:i,s:o}", "imported", imported, "duplicates", duplicates,
                                   "invalid", invalid));
}
