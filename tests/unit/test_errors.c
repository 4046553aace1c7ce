/* Unit tests for the error vocabulary: src/core/errors.c (ERR_* to status, code
 * and title) and the two halves of bad-input answers in src/http/validate.c,
 * http_problem_new (problem+json) and http_validate (declarative body specs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "http/validate.h"

/* ---- errors_* ---------------------------------------------------------------------- */

/* CONTRACT section 2, written out by hand so a change to the table is a visible,
 * deliberate change to this file too. */
static const struct {
  int err, status;
  const char *code, *title;
} contract[] = {
    {ERR_INVALID_JSON, 400, "invalid_json", "Body is not valid JSON"},
    {ERR_BAD_REQUEST, 400, "bad_request", "Malformed HTTP request"},
    {ERR_VALIDATION_FAILED, 400, "validation_failed", "Request validation failed"},
    {ERR_UNAUTHENTICATED, 401, "unauthenticated", "Authentication required"},
    {ERR_INVALID_CREDENTIALS, 401, "invalid_credentials", "Invalid credentials"},
    {ERR_FORBIDDEN, 403, "forbidden", "Forbidden"},
    {ERR_NOT_FOUND, 404, "not_found", "Not found"},
    {ERR_UNKNOWN_SERIAL, 404, "unknown_serial", "Unknown serial"},
    {ERR_METHOD_NOT_ALLOWED, 405, "method_not_allowed", "Method not allowed"},
    {ERR_CONFLICT, 409, "conflict", "Conflict"},
    {ERR_ALREADY_CLAIMED, 409, "already_claimed", "Device already claimed"},
    {ERR_REGISTRATION_PENDING, 409, "registration_pending", "Registration still pending"},
    {ERR_DEVICE_NOT_ACTIVE, 409, "device_not_active", "Device is not active"},
    {ERR_EMAIL_TAKEN, 409, "email_taken", "Email already registered"},
    {ERR_PAYLOAD_TOO_LARGE, 413, "payload_too_large", "Payload too large"},
    {ERR_URI_TOO_LONG, 414, "uri_too_long", "URI too long"},
    {ERR_UNSUPPORTED_MEDIA_TYPE, 415, "unsupported_media_type", "Unsupported media type"},
    {ERR_IDEMPOTENCY_KEY_REUSED, 422, "idempotency_key_reused", "Idempotency key reused"},
    {ERR_RATE_LIMITED, 429, "rate_limited", "Too many requests"},
    {ERR_HEADERS_TOO_LARGE, 431, "headers_too_large", "Request header fields too large"},
    {ERR_INTERNAL, 500, "internal", "Internal error"},
    {ERR_UPSTREAM_UNAVAILABLE, 502, "upstream_unavailable", "Upstream partner unavailable"},
    {ERR_UNAVAILABLE, 503, "unavailable", "Service unavailable"},
};
#define NCONTRACT (sizeof(contract) / sizeof(contract[0]))

static void test_every_contract_code_maps(void **state) {
  (void)state;
  for (size_t i = 0; i < NCONTRACT; i++) {
    int e = contract[i].err;
    assert_int_equal(errors_status(e), contract[i].status);
    assert_string_equal(errors_code(e), contract[i].code);
    assert_string_equal(errors_title(e), contract[i].title);
  }
  /* Every ERR_* of the enum is in the contract list above. */
  assert_int_equal(ERR__COUNT - 1, (int)NCONTRACT);
}

static void test_every_table_row_maps_to_itself(void **state) {
  (void)state;
  /* Walks ERRORS_TABLE so a new row is covered without editing this test, and
   * checks codes are unique (clients switch on them). */
  static const struct {
    int err, status;
    const char *code, *title;
  } rows[] = {
#define ROW(name, st, cd, tt) {ERR_##name, st, cd, tt},
      ERRORS_TABLE(ROW)
#undef ROW
  };
  size_t n = sizeof(rows) / sizeof(rows[0]);
  assert_int_equal((int)n, ERR__COUNT - 1);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(rows[i].err, (int)i + 1);
    assert_int_equal(errors_status(rows[i].err), rows[i].status);
    assert_string_equal(errors_code(rows[i].err), rows[i].code);
    assert_string_equal(errors_title(rows[i].err), rows[i].title);
    assert_in_range(rows[i].status, 400, 599);
    for (size_t j = 0; j < i; j++)
      assert_string_not_equal(rows[i].code, rows[j].code);
  }
}

static void test_negative_values_map_like_positive(void **state) {
  (void)state;
  for (size_t i = 0; i < NCONTRACT; i++) {
    int e = -contract[i].err;
    assert_int_equal(errors_status(e), contract[i].status);
    assert_string_equal(errors_code(e), contract[i].code);
    assert_string_equal(errors_title(e), contract[i].title);
  }
}

static void test_out_of_range_maps_to_internal(void **state) {
  (void)state;
  const int bad[] = {ERR__COUNT, -ERR__COUNT, ERR__COUNT + 1, 1000, -1000, INT_MAX, -INT_MAX};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(errors_status(bad[i]), 500);
    assert_string_equal(errors_code(bad[i]), "internal");
    assert_string_equal(errors_title(bad[i]), "Internal error");
  }
}

/* ---- http_problem_new --------------------------------------------------------------- */

static void test_problem_has_the_five_members(void **state) {
  (void)state;
  json_t *p = http_problem_new(-ERR_NOT_FOUND, "no device d-1", NULL, NULL);
  assert_non_null(p);
  assert_string_equal(json_string_value(json_object_get(p, "type")),
                      "https://iotfin.dev/problems/not_found");
  assert_string_equal(json_string_value(json_object_get(p, "title")), "Not found");
  assert_true(json_is_integer(json_object_get(p, "status")));
  assert_int_equal(json_integer_value(json_object_get(p, "status")), 404);
  assert_string_equal(json_string_value(json_object_get(p, "detail")), "no device d-1");
  assert_string_equal(json_string_value(json_object_get(p, "code")), "not_found");
  assert_int_equal(json_object_size(p), 5);
  json_decref(p);
}

static void test_problem_detail_defaults_to_title(void **state) {
  (void)state;
  json_t *p = http_problem_new(ERR_RATE_LIMITED, NULL, NULL, NULL);
  assert_string_equal(json_string_value(json_object_get(p, "detail")), "Too many requests");
  assert_int_equal(json_integer_value(json_object_get(p, "status")), 429);
  assert_string_equal(json_string_value(json_object_get(p, "code")), "rate_limited");
  json_decref(p);
}

static void test_problem_instance_and_errors(void **state) {
  (void)state;
  json_t *errs = json_pack("[{s:s,s:s}]", "field", "serial", "message", "is required");
  json_t *p = http_problem_new(-ERR_VALIDATION_FAILED, "bad body", errs, "/v1/devices");
  /* errs is stolen: the problem holds the only reference (ASan checks the rest). */
  assert_ptr_equal(json_object_get(p, "errors"), errs);
  assert_int_equal(errs->refcount, 1);
  assert_string_equal(json_string_value(json_object_get(p, "instance")), "/v1/devices");
  assert_int_equal(json_integer_value(json_object_get(p, "status")), 400);
  assert_string_equal(json_string_value(json_object_get(p, "code")), "validation_failed");
  assert_int_equal(json_object_size(p), 7);
  json_decref(p);
}

static void test_problem_unknown_error_is_internal(void **state) {
  (void)state;
  json_t *p = http_problem_new(-9999, NULL, NULL, NULL);
  assert_int_equal(json_integer_value(json_object_get(p, "status")), 500);
  assert_string_equal(json_string_value(json_object_get(p, "code")), "internal");
  assert_string_equal(json_string_value(json_object_get(p, "type")),
                      "https://iotfin.dev/problems/internal");
  json_decref(p);
}

/* ---- http_validate ------------------------------------------------------------------ */

static bool only_digits(const char *s) {
  for (; *s; s++)
    if (*s < '0' || *s > '9') return false;
  return true;
}

static const http_field_t fields[] = {
    {.name = "name", .type = HTTP_T_STRING, .required = true, .min = 1, .max = 10},
    {.name = "kind", .type = HTTP_T_STRING, .enum_values = "alpha|beta|gamma"},
    {.name = "pin", .type = HTTP_T_STRING, .pattern = "^[0-9]+$", .check = only_digits},
    {.name = "count", .type = HTTP_T_INT, .min = 1, .max = 100},
    {.name = "flag", .type = HTTP_T_BOOL},
    {.name = "meta", .type = HTTP_T_OBJECT, .max = 20},
    {.name = "tags", .type = HTTP_T_ARRAY, .min = 1, .max = 3},
    {.name = "note", .type = HTTP_T_STRING},
    {0},
};
static const http_body_t closed_spec = {.fields = fields};
static const http_body_t open_spec = {.fields = fields, .open = true};

/* Validates the JSON text against spec; returns the error array or NULL. */
static json_t *validate(const http_body_t *spec, const char *text) {
  json_error_t jerr;
  json_t *body = json_loads(text, JSON_DECODE_ANY, &jerr);
  assert_non_null(body);
  json_t *errs = http_validate(spec, body);
  json_decref(body);
  return errs;
}

/* Asserts errs holds exactly one {field, message} with these values, then frees it. */
static void expect_one_error(json_t *errs, const char *field, const char *message) {
  assert_non_null(errs);
  assert_true(json_is_array(errs));
  assert_int_equal(json_array_size(errs), 1);
  json_t *e = json_array_get(errs, 0);
  assert_string_equal(json_string_value(json_object_get(e, "field")), field);
  assert_string_equal(json_string_value(json_object_get(e, "message")), message);
  json_decref(errs);
}

static void test_valid_body_passes(void **state) {
  (void)state;
  assert_null(validate(&closed_spec, "{\"name\":\"x\"}"));
  assert_null(validate(&closed_spec,
                       "{\"name\":\"0123456789\",\"kind\":\"beta\",\"pin\":\"0042\",\"count\":100,"
                       "\"flag\":false,\"meta\":{\"a\":1},\"tags\":[1,2,3],\"note\":\"\"}"));
  /* null is as good as absent for optional fields. */
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"count\":null,\"kind\":null}"));
}

static void test_body_must_be_object(void **state) {
  (void)state;
  expect_one_error(validate(&closed_spec, "[]"), "body", "must be a JSON object");
  expect_one_error(validate(&closed_spec, "\"name\""), "body", "must be a JSON object");
  expect_one_error(http_validate(&closed_spec, NULL), "body", "must be a JSON object");
}

static void test_missing_required(void **state) {
  (void)state;
  expect_one_error(validate(&closed_spec, "{}"), "name", "is required");
  expect_one_error(validate(&closed_spec, "{\"name\":null}"), "name", "is required");
  expect_one_error(validate(&closed_spec, "{\"count\":5}"), "name", "is required");
}

static void test_wrong_types(void **state) {
  (void)state;
  expect_one_error(validate(&closed_spec, "{\"name\":5}"), "name", "must be a string");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"count\":\"5\"}"), "count",
                   "must be an integer");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"count\":5.5}"), "count",
                   "must be an integer");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"flag\":1}"), "flag",
                   "must be true or false");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"flag\":\"true\"}"), "flag",
                   "must be true or false");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"meta\":[]}"), "meta",
                   "must be an object");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"tags\":{}}"), "tags",
                   "must be an array");
  expect_one_error(validate(&closed_spec, "{\"name\":[\"x\"]}"), "name", "must be a string");
}

static void test_string_length_bounds(void **state) {
  (void)state;
  expect_one_error(validate(&closed_spec, "{\"name\":\"\"}"), "name",
                   "must be 1 to 10 characters long");
  expect_one_error(validate(&closed_spec, "{\"name\":\"0123456789a\"}"), "name",
                   "must be 1 to 10 characters long");
  assert_null(validate(&closed_spec, "{\"name\":\"a\"}"));
  assert_null(validate(&closed_spec, "{\"name\":\"0123456789\"}"));
  /* No bounds: any length, the empty string included. */
  assert_null(validate(&closed_spec, "{\"name\":\"a\",\"note\":\"\"}"));
}

static void test_enum(void **state) {
  (void)state;
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"kind\":\"alpha\"}"));
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"kind\":\"gamma\"}"));
  const char *bad[] = {
      "{\"name\":\"x\",\"kind\":\"delta\"}",      "{\"name\":\"x\",\"kind\":\"alph\"}",
      "{\"name\":\"x\",\"kind\":\"alphabeta\"}",  "{\"name\":\"x\",\"kind\":\"\"}",
      "{\"name\":\"x\",\"kind\":\"alpha|beta\"}", "{\"name\":\"x\",\"kind\":\"ALPHA\"}"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    expect_one_error(validate(&closed_spec, bad[i]), "kind", "must be one of: alpha|beta|gamma");
}

static void test_check_function_and_pattern(void **state) {
  (void)state;
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"pin\":\"123\"}"));
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"pin\":\"12a\"}"), "pin",
                   "must match ^[0-9]+$");
}

static void test_unknown_field(void **state) {
  (void)state;
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"extra\":1}"), "extra",
                   "is not a known field");
  /* Field names are case-sensitive. */
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"Name\":\"y\"}"), "Name",
                   "is not a known field");
  /* Even a null unknown field is reported: the client sent something we ignore. */
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"nope\":null}"), "nope",
                   "is not a known field");
}

static void test_integer_range(void **state) {
  (void)state;
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"count\":1}"));
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"count\":100}"));
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"count\":0}"), "count",
                   "must be between 1 and 100");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"count\":101}"), "count",
                   "must be between 1 and 100");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"count\":-5}"), "count",
                   "must be between 1 and 100");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"count\":9223372036854775807}"),
                   "count", "must be between 1 and 100");
}

static void test_object_size_bound(void **state) {
  (void)state;
  /* {"k":"0123456789ab"} is 20 bytes as compact JSON: allowed; one more is not. */
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"meta\":{\"k\":\"0123456789ab\"}}"));
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"meta\":{}}"));
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"meta\":{\"k\":\"0123456789abc\"}}"),
                   "meta", "must be at most 20 bytes as JSON");
  /* Whitespace in the request does not count, the compact form does. */
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"meta\":{  \"k\" :  \"0123456789ab\" }}"));
}

static void test_array_bounds(void **state) {
  (void)state;
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"tags\":[\"a\"]}"));
  assert_null(validate(&closed_spec, "{\"name\":\"x\",\"tags\":[1,2,3]}"));
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"tags\":[]}"), "tags",
                   "must have 1 to 3 items");
  expect_one_error(validate(&closed_spec, "{\"name\":\"x\",\"tags\":[1,2,3,4]}"), "tags",
                   "must have 1 to 3 items");
}

static void test_every_problem_is_reported(void **state) {
  (void)state;
  json_t *errs = validate(&closed_spec, "{\"kind\":\"zeta\",\"count\":0,\"flag\":\"no\","
                                        "\"tags\":[],\"x\":1,\"y\":2}");
  assert_non_null(errs);
  /* name missing, kind, count, flag, tags, x unknown, y unknown. */
  assert_int_equal(json_array_size(errs), 7);
  const char *want[] = {"name", "kind", "count", "flag", "tags", "x", "y"};
  for (size_t i = 0; i < 7; i++) {
    bool seen = false;
    size_t k;
    json_t *e;
    json_array_foreach(errs, k, e) {
      if (strcmp(json_string_value(json_object_get(e, "field")), want[i]) == 0) seen = true;
      assert_non_null(json_string_value(json_object_get(e, "message")));
    }
    assert_true(seen);
  }
  json_decref(errs);
}

static void test_open_spec_allows_unknown_fields(void **state) {
  (void)state;
  assert_null(validate(&open_spec, "{\"name\":\"x\",\"extra\":1,\"more\":{\"a\":[1]}}"));
  /* Known fields are still checked. */
  expect_one_error(validate(&open_spec, "{\"extra\":1}"), "name", "is required");
  expect_one_error(validate(&open_spec, "{\"name\":\"x\",\"count\":0,\"extra\":1}"), "count",
                   "must be between 1 and 100");
}

static void test_empty_spec(void **state) {
  (void)state;
  static const http_field_t none[] = {{0}};
  static const http_body_t empty = {.fields = none};
  static const http_body_t nofields = {.fields = NULL};
  assert_null(validate(&empty, "{}"));
  expect_one_error(validate(&empty, "{\"a\":1}"), "a", "is not a known field");
  assert_null(validate(&nofields, "{}"));
  expect_one_error(validate(&nofields, "{\"a\":1}"), "a", "is not a known field");
}

/* The length rule says "characters", and the contract's limits are in characters
 * (password of at least 10 chars, name of at most N). jansson's string length is in
 * bytes, so non-ASCII text is measured wrong. */
static void test_string_length_counts_characters(void **state) {
  (void)state;
  /* Ten characters of two bytes each: within 1 to 10 characters. */
  assert_null(validate(&closed_spec, "{\"name\":\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9"
                                     "\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\"}"));
  static const http_field_t pw[] = {
      {.name = "password", .type = HTTP_T_STRING, .required = true, .min = 10, .max = 200}, {0}};
  static const http_body_t pw_spec = {.fields = pw};
  /* Five characters (ten bytes) are fewer than ten characters. */
  expect_one_error(validate(&pw_spec, "{\"password\":\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\"}"),
                   "password", "must be 10 to 200 characters long");
}

/* "Unknown values map to ERR_INTERNAL", err may be negative: INT_MIN is a value a
 * caller can pass, and negating it is undefined behaviour (UBSan aborts here). */
static void test_int_min_maps_to_internal(void **state) {
  (void)state;
  volatile int v = INT_MIN;
  assert_int_equal(errors_status(v), 500);
  assert_string_equal(errors_code(v), "internal");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_contract_code_maps),
      cmocka_unit_test(test_every_table_row_maps_to_itself),
      cmocka_unit_test(test_negative_values_map_like_positive),
      cmocka_unit_test(test_out_of_range_maps_to_internal),
      cmocka_unit_test(test_problem_has_the_five_members),
      cmocka_unit_test(test_problem_detail_defaults_to_title),
      cmocka_unit_test(test_problem_instance_and_errors),
      cmocka_unit_test(test_problem_unknown_error_is_internal),
      cmocka_unit_test(test_valid_body_passes),
      cmocka_unit_test(test_body_must_be_object),
      cmocka_unit_test(test_missing_required),
      cmocka_unit_test(test_wrong_types),
      cmocka_unit_test(test_string_length_bounds),
      cmocka_unit_test(test_enum),
      cmocka_unit_test(test_check_function_and_pattern),
      cmocka_unit_test(test_unknown_field),
      cmocka_unit_test(test_integer_range),
      cmocka_unit_test(test_object_size_bound),
      cmocka_unit_test(test_array_bounds),
      cmocka_unit_test(test_every_problem_is_reported),
      cmocka_unit_test(test_open_spec_allows_unknown_fields),
      cmocka_unit_test(test_empty_spec),
      cmocka_unit_test(test_string_length_counts_characters),
      /* Last: under UBSan the process aborts inside this test. */
      cmocka_unit_test(test_int_min_maps_to_internal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
