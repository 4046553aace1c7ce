/* Unit tests for src/store/rowjson.c and the store's rows: a row described once reads
 * the same as a jansson value dumped and as text written directly (the hot reads
 * answer with the text, the lists with the value), for picked rows (SQL NULL in each
 * kind of field, escapes, UTF-8, booleans) and for random rows from a fixed seed; and
 * rows keep their cells, NULLs among them, as they grow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/jsontext.h"
#include "seeded.h"
#include "store/rowjson.h"
#include "store/store_internal.h"

static const row_field_t FIELDS[] = {{"id", ROW_STRING},       {"model", ROW_STRING},
                                     {"online", ROW_BOOL},     {"username", ROW_OMITTED},
                                     {"quote\"d", ROW_STRING}, {NULL, ROW_STRING}};
#define NCOLS 5

static store_rows_t *one_row(const char *const cells[NCOLS]) {
  store_rows_t *r = store__rows_new(NCOLS);
  assert_non_null(r);
  assert_int_equal(store__rows_add(r, NCOLS, cells), 0);
  return r;
}

/* Row 0 of r as text, checked against the dumped value; returns the text. */
static char *both_ways(const store_rows_t *r, int i) {
  json_t *v = row_json(FIELDS, r, i);
  assert_non_null(v);
  char *want = json_dumps(v, JSON_COMPACT);
  json_decref(v);
  size_t len = 0;
  char *got = row_text(FIELDS, r, i, &len);
  assert_non_null(got);
  assert_string_equal(got, want);
  assert_int_equal(len, strlen(want));
  free(want);
  return got;
}

static void test_picked_rows(void **state) {
  (void)state;
  const char *full[NCOLS] = {"d-1", "caf\xc3\xa9 \xe2\x82\xac", "1", "ann", "tab\tnl\n\"\\\x01"};
  store_rows_t *r = one_row(full);
  char *t = both_ways(r, 0);
  assert_string_equal(t, "{\"id\":\"d-1\",\"model\":\"caf\xc3\xa9 \xe2\x82\xac\",\"online\":true,"
                         "\"username\":\"ann\",\"quote\\\"d\":\"tab\\tnl\\n\\\"\\\\\\u0001\"}");
  free(t);
  store_rows_free(&r);

  /* SQL NULL: null for a string, false for a boolean, no key at all when omitted. */
  const char *nulls[NCOLS] = {"", NULL, NULL, NULL, NULL};
  r = one_row(nulls);
  t = both_ways(r, 0);
  assert_string_equal(t, "{\"id\":\"\",\"model\":null,\"online\":false,\"quote\\\"d\":null}");
  free(t);
  store_rows_free(&r);

  const char *zero[NCOLS] = {"x", "m", "0", "", "y"};
  r = one_row(zero);
  t = both_ways(r, 0);
  assert_string_equal(t, "{\"id\":\"x\",\"model\":\"m\",\"online\":false,\"username\":\"\","
                         "\"quote\\\"d\":\"y\"}");
  free(t);
  store_rows_free(&r);
}

static char *random_text(void) {
  char buf[128];
  buf[seeded_text(buf, 19, false)] = 0;
  return strdup(buf);
}

/* Many random rows in one result set: every row reads both ways alike, and the cells
 * read back are the ones put in, after the set grew many times. */
static void test_random_rows(void **state) {
  (void)state;
  enum { ROWS = 3000 };
  store_rows_t *r = store__rows_new(NCOLS);
  char *kept[ROWS][NCOLS];
  for (int i = 0; i < ROWS; i++) {
    for (int k = 0; k < NCOLS; k++) {
      bool null = rnd() % 4 == 0 && k != 0;
      kept[i][k] = null ? NULL : k == 2 ? strdup(rnd() % 2 ? "1" : "0") : random_text();
    }
    assert_int_equal(store__rows_add(r, NCOLS, (const char *const *)kept[i]), 0);
  }
  assert_int_equal(store_rows_count(r), ROWS);
  for (int i = 0; i < ROWS; i++) {
    for (int k = 0; k < NCOLS; k++) {
      const char *got = store_rows_text(r, i, k);
      if (!kept[i][k]) {
        assert_null(got);
        assert_true(store_rows_is_null(r, i, k));
      } else {
        assert_string_equal(got, kept[i][k]);
      }
      free(kept[i][k]);
    }
    free(both_ways(r, i));
  }
  store_rows_free(&r);
  assert_null(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_picked_rows),
      cmocka_unit_test(test_random_rows),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
