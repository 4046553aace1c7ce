/* Unit tests for src/http/router.c: http_router_match over a small route table of
 * its own, covering exact and {param} segments, HEAD as GET, and 404 versus 405. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "core/errors.h"
#include "http/router.h"

/* Handlers and bodies are irrelevant to matching; only method and path are read. */
static const http_route_t routes[] = {
    {.method = "GET", .path = "/healthz"},
    {.method = "GET", .path = "/v1/devices"},
    {.method = "POST", .path = "/v1/devices"},
    {.method = "GET", .path = "/v1/devices/{id}"},
    {.method = "DELETE", .path = "/v1/devices/{id}"},
    {.method = "POST", .path = "/v1/devices/{id}/commands"},
    {.method = "GET", .path = "/v1/devices/{device_id}/commands/{command_id}"},
    {.method = "POST", .path = "/v1/sessions/anonymous"},
    {.method = "GET", .path = "/"},
};
#define NROUTES ((int)(sizeof(routes) / sizeof(routes[0])))

static int match(const char *method, const char *path, http_match_t *m) {
  return http_router_match(routes, NROUTES, method, path, m);
}

static void test_exact_match(void **state) {
  (void)state;
  http_match_t m;
  assert_int_equal(match("GET", "/healthz", &m), 0);
  assert_int_equal(m.nparams, 0);
  assert_int_equal(match("GET", "/v1/devices", &m), 1);
  assert_int_equal(match("POST", "/v1/devices", &m), 2);
  assert_int_equal(match("POST", "/v1/sessions/anonymous", &m), 7);
  assert_int_equal(match("GET", "/", &m), 8);
}

static void test_exact_match_is_whole_segments(void **state) {
  (void)state;
  http_match_t m;
  /* A prefix or an extension of a segment is another path. */
  assert_int_equal(match("GET", "/health", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("GET", "/healthzz", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("GET", "/v1", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("GET", "/v1/device", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("POST", "/v1/sessions/anonymous/x", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("GET", "", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("GET", "healthz", &m), -ERR_NOT_FOUND);
  /* Matching is case-sensitive. */
  assert_int_equal(match("GET", "/HEALTHZ", &m), -ERR_NOT_FOUND);
}

static void test_param_capture(void **state) {
  (void)state;
  http_match_t m;
  assert_int_equal(match("GET", "/v1/devices/0193-abc", &m), 3);
  assert_int_equal(m.nparams, 1);
  assert_string_equal(m.names[0], "id");
  assert_string_equal(m.values[0], "0193-abc");

  assert_int_equal(match("POST", "/v1/devices/dev42/commands", &m), 5);
  assert_int_equal(m.nparams, 1);
  assert_string_equal(m.names[0], "id");
  assert_string_equal(m.values[0], "dev42");
}

static void test_param_must_not_be_empty(void **state) {
  (void)state;
  http_match_t m;
  /* "/v1/devices/" has an empty last segment: no {id} to capture. */
  assert_int_equal(match("GET", "/v1/devices//commands", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("POST", "/v1/devices//commands", &m), -ERR_NOT_FOUND);
}

static void test_trailing_slash_does_not_match(void **state) {
  (void)state;
  http_match_t m;
  assert_int_equal(match("GET", "/healthz/", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("GET", "/v1/devices/", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("GET", "/v1/devices/abc/", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("POST", "/v1/sessions/anonymous/", &m), -ERR_NOT_FOUND);
}

static void test_head_matches_get(void **state) {
  (void)state;
  http_match_t m;
  assert_int_equal(match("HEAD", "/healthz", &m), 0);
  assert_int_equal(match("HEAD", "/v1/devices/xyz", &m), 3);
  assert_int_equal(m.nparams, 1);
  assert_string_equal(m.values[0], "xyz");
  /* HEAD on a path that only takes POST is 405, with POST allowed. */
  assert_int_equal(match("HEAD", "/v1/sessions/anonymous", &m), -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "POST");
}

static void test_unknown_path_is_404(void **state) {
  (void)state;
  http_match_t m;
  assert_int_equal(match("GET", "/nope", &m), -ERR_NOT_FOUND);
  assert_string_equal(m.allow, "");
  assert_int_equal(match("DELETE", "/v2/devices", &m), -ERR_NOT_FOUND);
  assert_string_equal(m.allow, "");
}

static void test_known_path_wrong_method_is_405_with_allow(void **state) {
  (void)state;
  http_match_t m;
  assert_int_equal(match("DELETE", "/v1/devices", &m), -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "GET, POST");

  assert_int_equal(match("PUT", "/v1/devices/abc", &m), -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "GET, DELETE");

  assert_int_equal(match("GET", "/v1/sessions/anonymous", &m), -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "POST");

  assert_int_equal(match("POST", "/healthz", &m), -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "GET");
}

static void test_allow_lists_each_method_once(void **state) {
  (void)state;
  /* Two patterns that both fit the path under the same method. */
  static const http_route_t dup[] = {
      {.method = "GET", .path = "/a/{x}"},
      {.method = "GET", .path = "/a/b"},
      {.method = "PATCH", .path = "/a/{y}"},
  };
  http_match_t m;
  assert_int_equal(http_router_match(dup, 3, "POST", "/a/b", &m), -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "GET, PATCH");
}

static void test_param_length_limit(void **state) {
  (void)state;
  http_match_t m;
  char path[64 + HTTP_PARAM_MAX * 2];
  char value[HTTP_PARAM_MAX + 8];

  /* HTTP_PARAM_MAX - 1 characters fit (the buffer keeps a terminator). */
  memset(value, 'a', HTTP_PARAM_MAX - 1);
  value[HTTP_PARAM_MAX - 1] = 0;
  snprintf(path, sizeof(path), "/v1/devices/%s", value);
  assert_int_equal(match("GET", path, &m), 3);
  assert_string_equal(m.values[0], value);
  assert_int_equal(strlen(m.values[0]), HTTP_PARAM_MAX - 1);

  /* One more does not: the route does not match rather than truncating the id. */
  memset(value, 'a', HTTP_PARAM_MAX);
  value[HTTP_PARAM_MAX] = 0;
  snprintf(path, sizeof(path), "/v1/devices/%s", value);
  assert_int_equal(match("GET", path, &m), -ERR_NOT_FOUND);
  snprintf(path, sizeof(path), "/v1/devices/%s/commands", value);
  assert_int_equal(match("POST", path, &m), -ERR_NOT_FOUND);
}

static void test_multiple_params(void **state) {
  (void)state;
  http_match_t m;
  assert_int_equal(match("GET", "/v1/devices/d-1/commands/c-2", &m), 6);
  assert_int_equal(m.nparams, 2);
  assert_string_equal(m.names[0], "device_id");
  assert_string_equal(m.values[0], "d-1");
  assert_string_equal(m.names[1], "command_id");
  assert_string_equal(m.values[1], "c-2");

  assert_int_equal(match("DELETE", "/v1/devices/d-1/commands/c-2", &m), -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "GET");
  assert_int_equal(match("GET", "/v1/devices/d-1/commands/", &m), -ERR_NOT_FOUND);
  assert_int_equal(match("GET", "/v1/devices/d-1/commands/c-2/x", &m), -ERR_NOT_FOUND);
}

static void test_params_up_to_the_limit(void **state) {
  (void)state;
  static const http_route_t deep[] = {
      {.method = "GET", .path = "/{a}/{b}/{c}/{d}"},
      {.method = "GET", .path = "/{a}/{b}/{c}/{d}/{e}"},
  };
  http_match_t m;
  assert_int_equal(http_router_match(deep, 2, "GET", "/1/2/3/4", &m), 0);
  assert_int_equal(m.nparams, HTTP_MAX_PARAMS);
  assert_string_equal(m.names[3], "d");
  assert_string_equal(m.values[3], "4");
  /* A fifth parameter has no slot, so that pattern never matches. */
  assert_int_equal(http_router_match(deep, 2, "GET", "/1/2/3/4/5", &m), -ERR_NOT_FOUND);
}

static void test_earlier_mismatch_does_not_leak_params(void **state) {
  (void)state;
  /* The first route captures {x} and then fails on the method; the match returned
   * must carry only the params of the route that matched. */
  static const http_route_t t[] = {
      {.method = "POST", .path = "/things/{x}"},
      {.method = "GET", .path = "/things/all"},
  };
  http_match_t m;
  assert_int_equal(http_router_match(t, 2, "GET", "/things/all", &m), 1);
  assert_int_equal(m.nparams, 0);
}

static void test_rest_param(void **state) {
  (void)state;
  static const http_route_t t[] = {
      {.method = "GET", .path = "/mock/{partner}/status"},
      {.method = "*", .path = "/mock/{partner}/{rest*}"},
      {.method = "POST", .path = "/files/{path*}"},
  };
  http_match_t m;
  /* {name*} takes the rest of the path, slashes included. */
  assert_int_equal(http_router_match(t, 3, "POST", "/files/a/b/c.txt", &m), 2);
  assert_int_equal(m.nparams, 1);
  assert_string_equal(m.names[0], "path");
  assert_string_equal(m.values[0], "a/b/c.txt");
  assert_int_equal(http_router_match(t, 3, "POST", "/files/one", &m), 2);
  assert_string_equal(m.values[0], "one");
  /* ...one segment or more: nothing after the prefix is no match. */
  assert_int_equal(http_router_match(t, 3, "POST", "/files/", &m), -ERR_NOT_FOUND);
  assert_int_equal(http_router_match(t, 3, "POST", "/files", &m), -ERR_NOT_FOUND);
  /* Other methods on a {name*} route are 405 like any other. */
  assert_int_equal(http_router_match(t, 3, "GET", "/files/a", &m), -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "POST");

  /* Too long a rest is no match, as for {name}. */
  char path[HTTP_PARAM_MAX + 32];
  snprintf(path, sizeof(path), "/files/");
  size_t used = strlen(path);
  memset(path + used, 'x', HTTP_PARAM_MAX);
  path[used + HTTP_PARAM_MAX] = 0;
  assert_int_equal(http_router_match(t, 3, "POST", path, &m), -ERR_NOT_FOUND);
  path[used + HTTP_PARAM_MAX - 1] = 0;
  assert_int_equal(http_router_match(t, 3, "POST", path, &m), 2);
  assert_int_equal(strlen(m.values[0]), HTTP_PARAM_MAX - 1);
}

static void test_any_method_route(void **state) {
  (void)state;
  static const http_route_t t[] = {
      {.method = "GET", .path = "/mock/{partner}/status"},
      {.method = "*", .path = "/mock/{partner}/{rest*}"},
  };
  http_match_t m;
  const char *methods[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"};
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
    assert_int_equal(http_router_match(t, 2, methods[i], "/mock/kyc/v1/checks/42", &m), 1);
    assert_int_equal(m.nparams, 2);
    assert_string_equal(m.names[0], "partner");
    assert_string_equal(m.values[0], "kyc");
    assert_string_equal(m.names[1], "rest");
    assert_string_equal(m.values[1], "v1/checks/42");
  }
  /* The exact route still wins for its own method (it comes first in the table)... */
  assert_int_equal(http_router_match(t, 2, "GET", "/mock/kyc/status", &m), 0);
  assert_int_equal(m.nparams, 1);
  /* ...and a path known to a routed method answers 405 to the others, rather than
   * falling into the catch-all (the mock's control routes rely on this). */
  assert_int_equal(http_router_match(t, 2, "POST", "/mock/kyc/status", &m),
                   -ERR_METHOD_NOT_ALLOWED);
  assert_string_equal(m.allow, "GET");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact_match),
      cmocka_unit_test(test_exact_match_is_whole_segments),
      cmocka_unit_test(test_param_capture),
      cmocka_unit_test(test_param_must_not_be_empty),
      cmocka_unit_test(test_trailing_slash_does_not_match),
      cmocka_unit_test(test_head_matches_get),
      cmocka_unit_test(test_unknown_path_is_404),
      cmocka_unit_test(test_known_path_wrong_method_is_405_with_allow),
      cmocka_unit_test(test_allow_lists_each_method_once),
      cmocka_unit_test(test_param_length_limit),
      cmocka_unit_test(test_multiple_params),
      cmocka_unit_test(test_params_up_to_the_limit),
      cmocka_unit_test(test_earlier_mismatch_does_not_leak_params),
      cmocka_unit_test(test_rest_param),
      cmocka_unit_test(test_any_method_route),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
