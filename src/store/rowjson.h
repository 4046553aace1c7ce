/* A stored row as a JSON object, its shape said once: each column's key and how its
 * text reads in JSON. The same description gives a jansson value (for answers that
 * are built on, such as lists) or the JSON text itself, with no jansson value between:
 * the hottest reads (GET /v1/devices/{id}, GET /v1/me) answer with that text, since
 * building and dumping a value was about a third of their work (issue #14). Both give
 * the same bytes once dumped (tests/unit/test_rowjson.c). */
#ifndef IOTFIN_STORE_ROWJSON_H
#define IOTFIN_STORE_ROWJSON_H

#include <jansson.h>
#include <stddef.h>

#include "store/store.h"

typedef enum {
  ROW_STRING,  /* the column's text; SQL NULL reads null */
  ROW_BOOL,    /* an integer column: false when 0, else true */
  ROW_OMITTED, /* the column's text, the key left out when it is SQL NULL */
} row_kind_t;

/* Field k describes column k; the list ends with a field whose key is NULL. */
typedef struct {
  const char *key;
  row_kind_t kind;
} row_field_t;

/* Row i of r as a new object; NULL when memory runs out. */
json_t *row_json(const row_field_t *fields, const store_rows_t *r, int i);
/* Row i of r as compact JSON text (what json_text() of row_json() writes), malloc'd,
 * its length in *len; NULL when memory runs out. Stored text is valid UTF-8: it came
 * in through jansson, which checks it. */
char *row_text(const row_field_t *fields, const store_rows_t *r, int i, size_t *len);

#endif
