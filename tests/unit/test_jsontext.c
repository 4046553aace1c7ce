/* Unit tests for src/core/jsontext.c: json_text writes exactly what
 * json_dumps(JSON_COMPACT) writes, for hand-picked values (every escape, NUL inside
 * strings and keys, multibyte UTF-8, integer extremes, reals, empty containers, key
 * order) and for thousands of random documents from a fixed seed. */
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

static void assert_same(json_t *v) {
  char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
  size_t len = 0;
  char *got = json_text(v, &len);
  assert_non_null(want);
  assert_non_null(got);
  assert_string_equal(got, want);
  assert_int_equal(len, strlen(want));
  free(want);
  free(got);
  json_decref(v);
}

static void test_picked_values(void **state) {
  (void)state;
  assert_same(json_pack("{}"));
  assert_same(json_pack("[]"));
  assert_same(json_pack("{s:s,s:i,s:b,s:n,s:[]}", "b", "x", "a", 1, "c", 1, "d", "e"));
  assert_same(json_string("quote \" backslash \\ slash / tab \t nl \n cr \r bs \b ff \f"));
  assert_same(json_string("\x01\x02\x1f\x7f control and DEL"));
  assert_same(json_string("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe2\x80\xa8"));
  assert_same(json_stringn("nul\0inside", 10));
  json_t *o = json_object();
  json_object_setn_new(o, "k\0ey", 4, json_true());
  json_object_set_new(o, "\"q\"", json_false());
  assert_same(o);
  assert_same(json_integer(INT64_MAX));
  assert_same(json_integer(INT64_MIN));
  assert_same(json_integer(0));
  assert_same(json_real(0.1));
  assert_same(json_real(-2.5e-300));
  assert_same(json_real(3.0));
  assert_same(json_pack("[[[[{s:[{}]}]]]]", "deep"));
  assert_null(json_text(NULL, NULL));
}

static json_t *random_string(void) {
  char buf[256];
  return json_stringn(buf, seeded_text(buf, 23, true));
}

static json_t *random_value(int depth) {
  switch (rnd() % (depth > 4 ? 6 : 8)) {
  case 0:
    return random_string();
  case 1:
    return json_integer((json_int_t)(((uint64_t)rnd() << 32) | rnd()));
  case 2:
    return json_real((double)(int32_t)rnd() / ((rnd() % 1000) + 1));
  case 3:
    return json_true();
  case 4:
    return json_false();
  case 5:
    return json_null();
  case 6: {
    json_t *a = json_array();
    for (uint32_t i = rnd() % 6; i > 0; i--)
      json_array_append_new(a, random_value(depth + 1));
    return a;
  }
  default: {
    json_t *o = json_object();
    for (uint32_t i = rnd() % 6; i > 0; i--) {
      json_t *k = random_string();
      json_object_setn_new(o, json_string_value(k), json_string_length(k), random_value(depth + 1));
      json_decref(k);
    }
    return o;
  }
  }
}

static void test_random_documents(void **state) {
  (void)state;
  for (int i = 0; i < 5000; i++)
    assert_same(random_value(0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_picked_values),
      cmocka_unit_test(test_random_documents),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
