/* Unit tests for src/core/log.c: the per-call-site storm limiter. Standard error is
 * redirected into a temporary file and the limiter's clock is a variable, so each
 * test decides what time it is and counts the lines that came out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"

static int64_t fake_now;
static int64_t fake_clock(void) { return fake_now; }

static int saved_stderr = -1;
static FILE *capture;

static int setup(void **state) {
  (void)state;
  fflush(stderr);
  saved_stderr = dup(STDERR_FILENO);
  capture = tmpfile();
  assert_non_null(capture);
  dup2(fileno(capture), STDERR_FILENO);
  fake_now = 1000000;
  log__set_clock(fake_clock);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  log__set_clock(NULL);
  dup2(saved_stderr, STDERR_FILENO);
  close(saved_stderr);
  fclose(capture);
  return 0;
}

/* The captured lines so far, parsed; caller owns the array. */
static json_t *lines(void) {
  json_t *out = json_array();
  rewind(capture);
  char buf[4096];
  while (fgets(buf, sizeof(buf), capture)) {
    json_t *o = json_loads(buf, 0, NULL);
    assert_non_null(o);
    json_array_append_new(out, o);
  }
  fseek(capture, 0, SEEK_END);
  return out;
}

/* Lines carrying a "suppressed" count, and the sum of those counts. */
static long long suppressed_sum(json_t *all, int *nsummaries) {
  long long sum = 0;
  *nsummaries = 0;
  size_t i;
  json_t *o;
  json_array_foreach(all, i, o) {
    json_t *s = json_object_get(o, "suppressed");
    if (s) {
      sum += json_integer_value(s);
      (*nsummaries)++;
    }
  }
  return sum;
}

static void storm(int n) {
  for (int i = 0; i < n; i++)
    log_warn("test", "partner failed: attempt %d", i);
}

static void test_a_storm_is_cut_to_ten_lines_and_summarised(void **state) {
  storm(1000);
  json_t *all = lines();
  assert_int_equal(json_array_size(all), 10);
  /* Nothing more while the storm may still go on ... */
  fake_now += 500;
  log_flush_suppressed();
  json_decref(all);
  all = lines();
  assert_int_equal(json_array_size(all), 10);
  /* ... one summary once it has been quiet for a second. */
  fake_now += 600;
  log_flush_suppressed();
  json_decref(all);
  all = lines();
  assert_int_equal(json_array_size(all), 11);
  json_t *last = json_array_get(all, 10);
  assert_int_equal(json_integer_value(json_object_get(last, "suppressed")), 990);
  const char *msg = json_string_value(json_object_get(last, "msg"));
  assert_non_null(strstr(msg, "partner failed: attempt 999"));
  assert_non_null(strstr(msg, "(suppressed 990 similar lines in the last 2 s)"));
  assert_string_equal(json_string_value(json_object_get(last, "level")), "warn");
  assert_string_equal(json_string_value(json_object_get(last, "module")), "test");
  /* Reported once. */
  fake_now += 5000;
  log_flush_suppressed();
  json_decref(all);
  all = lines();
  assert_int_equal(json_array_size(all), 11);
  json_decref(all);
}

static void site_a(void) { log_error("test", "site a"); }
static void site_b(void) { log_error("test", "site b %d", 1); }

static void test_each_call_site_has_its_own_budget(void **state) {
  for (int i = 0; i < 50; i++) {
    site_a();
    site_b();
  }
  json_t *all = lines();
  assert_int_equal(json_array_size(all), 20);
  json_decref(all);
}

static void test_a_new_second_brings_a_new_budget(void **state) {
  for (int s = 0; s < 3; s++) {
    storm(15);
    fake_now += 1000;
  }
  json_t *all = lines();
  int n;
  suppressed_sum(all, &n);
  assert_int_equal(json_array_size(all) - (size_t)n, 30); /* 10 a second */
  json_decref(all);
}

static void test_a_long_storm_is_summarised_every_ten_seconds(void **state) {
  /* 100 lines a second for 25 s. */
  for (int t = 0; t < 250; t++) {
    storm(10);
    fake_now += 100;
  }
  fake_now += 2000;
  log_flush_suppressed();
  json_t *all = lines();
  int n;
  long long sum = suppressed_sum(all, &n);
  assert_true(n >= 2 && n <= 4);
  size_t shown = json_array_size(all) - (size_t)n;
  assert_int_equal(shown, 250);
  assert_int_equal(shown + (size_t)sum, 2500);
  json_decref(all);
}

static void test_log_admit_keys_on_variant(void **state) {
  static const char route[] = "/v1/things";
  int ok404 = 0, ok400 = 0;
  for (int i = 0; i < 100; i++) {
    ok404 += log_admit(LOG_INFO, "access", route, 404, "GET /v1/things 404");
    ok400 += log_admit(LOG_INFO, "access", route, 400, "GET /v1/things 400");
  }
  assert_int_equal(ok404, 10);
  assert_int_equal(ok400, 10);
  fake_now += 2000;
  log_flush_suppressed();
  json_t *all = lines();
  int n;
  assert_int_equal(suppressed_sum(all, &n), 180);
  assert_int_equal(n, 2);
  json_decref(all);
}

static void test_many_sites_keep_memory_bounded_and_lose_no_count(void **state) {
  /* Far more sites than the table holds: evicted sites report their count first. */
  static char sites[20000];
  long long admitted = 0;
  for (int round = 0; round < 2; round++)
    for (size_t i = 0; i < sizeof(sites); i++)
      for (int k = 0; k < 11; k++)
        admitted += log_admit(LOG_WARN, "test", &sites[i], 0, "many");
  fake_now += 2000;
  log_flush_suppressed();
  json_t *all = lines();
  int n;
  long long sum = suppressed_sum(all, &n);
  assert_int_equal(admitted + sum, 2LL * 11 * (long long)sizeof(sites));
  json_decref(all);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_a_storm_is_cut_to_ten_lines_and_summarised),
      T(test_each_call_site_has_its_own_budget),
      T(test_a_new_second_brings_a_new_budget),
      T(test_a_long_storm_is_summarised_every_ten_seconds),
      T(test_log_admit_keys_on_variant),
      T(test_many_sites_keep_memory_bounded_and_lose_no_count),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
