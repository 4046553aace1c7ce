/* Rows as JSON objects, from one description (see rowjson.h). */
#include "store/rowjson.h"

#include <stdbool.h>

#include "core/jsontext.h"

json_t *row_json(const row_field_t *fields, const store_rows_t *r, int i) {
  json_t *o = json_object();
  for (int k = 0; o && fields[k].key; k++) {
    const char *v = store_rows_text(r, i, k);
    json_t *val;
    if (fields[k].kind == ROW_BOOL)
      val = json_boolean(store_rows_int(r, i, k) != 0);
    else if (!v && fields[k].kind == ROW_OMITTED)
      continue;
    else
      val = v ? json_string(v) : json_null();
    if (!val || json_object_set_new(o, fields[k].key, val) < 0) {
      json_decref(o);
      return NULL;
    }
  }
  return o;
}

char *row_text(const row_field_t *fields, const store_rows_t *r, int i, size_t *len) {
  json_buf_t b = {0};
  bool first = true;
  json_buf_raw(&b, "{", 1);
  for (int k = 0; fields[k].key; k++) {
    const char *v = store_rows_text(r, i, k);
    if (!v && fields[k].kind == ROW_OMITTED) continue;
    if (!first) json_buf_raw(&b, ",", 1);
    first = false;
    json_buf_string(&b, fields[k].key);
    json_buf_raw(&b, ":", 1);
    if (fields[k].kind == ROW_BOOL) {
      bool t = store_rows_int(r, i, k) != 0;
      json_buf_raw(&b, t ? "true" : "false", t ? 4 : 5);
    } else if (v) {
      json_buf_string(&b, v);
    } else {
      json_buf_raw(&b, "null", 4);
    }
  }
  json_buf_raw(&b, "}", 1);
  return json_buf_finish(&b, len);
}
