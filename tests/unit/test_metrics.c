/* Unit tests for src/core/metrics.c: the Prometheus text exposition of counters,
 * gauges and histograms, collectors run at render, and metrics_reset. The registry
 * is process-wide, so every test starts from metrics_reset(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"

static int reset(void **state) {
  (void)state;
  metrics_reset();
  return 0;
}

/* Asserts text contains line as a whole line. */
static void assert_line(const char *text, const char *line) {
  size_t n = strlen(line);
  for (const char *p = text; (p = strstr(p, line)); p++) {
    if ((p == text || p[-1] == '\n') && p[n] == '\n') return;
  }
  fail_msg("missing line \"%s\" in:\n%s", line, text);
}

static void assert_no_substring(const char *text, const char *s) {
  if (strstr(text, s)) fail_msg("unexpected \"%s\" in:\n%s", s, text);
}

static int count_lines(const char *text) {
  int n = 0;
  for (const char *p = text; *p; p++)
    n += *p == '\n';
  return n;
}

static void test_counter(void **state) {
  (void)state;
  metrics_describe("iotfin_http_requests_total", "counter", "HTTP requests served.");
  metrics_counter_add("iotfin_http_requests_total", "route=\"/v1/x\",status=\"200\"", 1);
  metrics_counter_add("iotfin_http_requests_total", "route=\"/v1/x\",status=\"200\"", 2);
  metrics_counter_add("iotfin_http_requests_total", "route=\"/v1/x\",status=\"404\"", 1);
  char *out = metrics_render();
  assert_non_null(out);
  assert_line(out, "# HELP iotfin_http_requests_total HTTP requests served.");
  assert_line(out, "# TYPE iotfin_http_requests_total counter");
  assert_line(out, "iotfin_http_requests_total{route=\"/v1/x\",status=\"200\"} 3");
  assert_line(out, "iotfin_http_requests_total{route=\"/v1/x\",status=\"404\"} 1");
  /* HELP and TYPE once per metric, before its samples. */
  assert_int_equal(count_lines(out), 4);
  assert_true(strstr(out, "# HELP") < strstr(out, "# TYPE"));
  assert_true(strstr(out, "# TYPE") < strstr(out, "iotfin_http_requests_total{"));
  free(out);
}

static void test_unlabelled_and_fractional(void **state) {
  (void)state;
  metrics_describe("iotfin_bytes_total", "counter", "Bytes.");
  metrics_counter_add("iotfin_bytes_total", "", 0.5);
  metrics_counter_add("iotfin_bytes_total", "", 0.25);
  char *out = metrics_render();
  assert_line(out, "iotfin_bytes_total 0.75");
  assert_no_substring(out, "iotfin_bytes_total{");
  free(out);
}

static void test_gauge_set_replaces(void **state) {
  (void)state;
  metrics_describe("iotfin_queue_depth", "gauge", "Messages waiting.");
  metrics_gauge_set("iotfin_queue_depth", "queue=\"mail\"", 5);
  metrics_gauge_set("iotfin_queue_depth", "queue=\"mail\"", 2);
  metrics_gauge_set("iotfin_queue_depth", "queue=\"bank\"", -1);
  char *out = metrics_render();
  assert_line(out, "# TYPE iotfin_queue_depth gauge");
  assert_line(out, "iotfin_queue_depth{queue=\"mail\"} 2");
  assert_line(out, "iotfin_queue_depth{queue=\"bank\"} -1");
  assert_no_substring(out, "} 5");
  free(out);
}

static void test_histogram(void **state) {
  (void)state;
  metrics_describe("iotfin_http_duration_seconds", "histogram", "Request latency.");
  const char *l = "route=\"/v1/x\"";
  metrics_histogram_observe("iotfin_http_duration_seconds", l, 0.0001); /* first bucket */
  metrics_histogram_observe("iotfin_http_duration_seconds", l, 0.003);  /* le 0.005 */
  metrics_histogram_observe("iotfin_http_duration_seconds", l, 0.1);    /* exactly on 0.1 */
  metrics_histogram_observe("iotfin_http_duration_seconds", l, 7);      /* only +Inf */
  char *out = metrics_render();
  assert_line(out, "# HELP iotfin_http_duration_seconds Request latency.");
  assert_line(out, "# TYPE iotfin_http_duration_seconds histogram");
  /* Buckets are cumulative and le is inclusive. */
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"0.0005\"} 1");
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"0.001\"} 1");
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"0.0025\"} 1");
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"0.005\"} 2");
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"0.05\"} 2");
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"0.1\"} 3");
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"1\"} 3");
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"5\"} 3");
  assert_line(out, "iotfin_http_duration_seconds_bucket{route=\"/v1/x\",le=\"+Inf\"} 4");
  assert_line(out, "iotfin_http_duration_seconds_count{route=\"/v1/x\"} 4");
  char *sum = strstr(out, "iotfin_http_duration_seconds_sum{route=\"/v1/x\"} ");
  assert_non_null(sum);
  double v = strtod(sum + strlen("iotfin_http_duration_seconds_sum{route=\"/v1/x\"} "), NULL);
  assert_float_equal(v, 7.1031, 1e-9);
  /* 2 description lines, 13 buckets, _sum and _count. */
  assert_int_equal(count_lines(out), 2 + 13 + 2);
  free(out);
}

static void test_histogram_without_labels(void **state) {
  (void)state;
  metrics_describe("iotfin_commit_seconds", "histogram", "Commit time.");
  metrics_histogram_observe("iotfin_commit_seconds", "", 0.02);
  char *out = metrics_render();
  assert_line(out, "iotfin_commit_seconds_bucket{le=\"0.01\"} 0");
  assert_line(out, "iotfin_commit_seconds_bucket{le=\"0.025\"} 1");
  assert_line(out, "iotfin_commit_seconds_bucket{le=\"+Inf\"} 1");
  assert_line(out, "iotfin_commit_seconds_sum 0.02");
  assert_line(out, "iotfin_commit_seconds_count 1");
  free(out);
}

static void test_metrics_grouped_by_name(void **state) {
  (void)state;
  metrics_describe("iotfin_a_total", "counter", "A.");
  metrics_describe("iotfin_b", "gauge", "B.");
  /* Interleaved updates still render as one block per metric. */
  metrics_counter_add("iotfin_a_total", "k=\"1\"", 1);
  metrics_gauge_set("iotfin_b", "", 9);
  metrics_counter_add("iotfin_a_total", "k=\"2\"", 1);
  char *out = metrics_render();
  const char *a1 = strstr(out, "iotfin_a_total{k=\"1\"}");
  const char *a2 = strstr(out, "iotfin_a_total{k=\"2\"}");
  const char *b = strstr(out, "# HELP iotfin_b ");
  assert_non_null(a1);
  assert_non_null(a2);
  assert_non_null(b);
  assert_true(a1 < b && a2 < b);
  free(out);
}

static void test_describe_is_idempotent(void **state) {
  (void)state;
  metrics_describe("iotfin_x_total", "counter", "First help.");
  metrics_describe("iotfin_x_total", "counter", "Second help.");
  metrics_counter_add("iotfin_x_total", "", 1);
  char *out = metrics_render();
  assert_line(out, "# HELP iotfin_x_total First help.");
  assert_no_substring(out, "Second help.");
  assert_int_equal(count_lines(out), 3);
  free(out);
}

static void test_described_but_unused_renders_nothing(void **state) {
  (void)state;
  metrics_describe("iotfin_unused_total", "counter", "Never touched.");
  char *out = metrics_render();
  assert_non_null(out);
  assert_string_equal(out, "");
  free(out);
}

typedef struct {
  int calls;
  double value;
} collector_state_t;

static void collect(void *arg) {
  collector_state_t *c = arg;
  c->calls++;
  metrics_gauge_set("iotfin_devices_online", "", c->value);
}

static void test_collector_called_at_render(void **state) {
  (void)state;
  collector_state_t c = {0, 3};
  metrics_describe("iotfin_devices_online", "gauge", "Devices connected.");
  metrics_add_collector(collect, &c);
  assert_int_equal(c.calls, 0);
  char *out = metrics_render();
  assert_int_equal(c.calls, 1);
  assert_line(out, "iotfin_devices_online 3");
  free(out);
  c.value = 4;
  out = metrics_render();
  assert_int_equal(c.calls, 2);
  assert_line(out, "iotfin_devices_online 4");
  free(out);
}

static void test_reset_forgets_everything(void **state) {
  (void)state;
  collector_state_t c = {0, 1};
  metrics_describe("iotfin_r_total", "counter", "R.");
  metrics_counter_add("iotfin_r_total", "", 5);
  metrics_add_collector(collect, &c);
  metrics_reset();
  char *out = metrics_render();
  assert_string_equal(out, "");
  assert_int_equal(c.calls, 0); /* the collector is gone too */
  free(out);
  /* After a reset the counter starts from zero again. */
  metrics_describe("iotfin_r_total", "counter", "R.");
  metrics_counter_add("iotfin_r_total", "", 1);
  out = metrics_render();
  assert_line(out, "iotfin_r_total 1");
  free(out);
}

static void test_large_output_grows(void **state) {
  (void)state;
  /* Far more than the initial 4 KiB buffer. */
  metrics_describe("iotfin_many_total", "counter", "Many series.");
  for (int i = 0; i < 500; i++) {
    char labels[64];
    snprintf(labels, sizeof(labels), "n=\"%04d\"", i);
    metrics_counter_add("iotfin_many_total", labels, i);
  }
  char *out = metrics_render();
  assert_true(strlen(out) > 4096);
  assert_line(out, "iotfin_many_total{n=\"0000\"} 0");
  assert_line(out, "iotfin_many_total{n=\"0499\"} 499");
  assert_int_equal(count_lines(out), 2 + 500);
  free(out);
}

#define NTHREADS 8
#define NADDS 5000

static void *adder(void *arg) {
  (void)arg;
  for (int i = 0; i < NADDS; i++)
    metrics_counter_add("iotfin_conc_total", "", 1);
  return NULL;
}

static void test_concurrent_adds(void **state) {
  (void)state;
  metrics_describe("iotfin_conc_total", "counter", "Concurrent.");
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, adder, NULL), 0);
  for (int i = 0; i < NTHREADS; i++)
    pthread_join(th[i], NULL);
  char *out = metrics_render();
  char want[64];
  snprintf(want, sizeof(want), "iotfin_conc_total %d", NTHREADS * NADDS);
  assert_line(out, want);
  free(out);
}

#define T(f) cmocka_unit_test_setup(f, reset)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_counter),
      T(test_unlabelled_and_fractional),
      T(test_gauge_set_replaces),
      T(test_histogram),
      T(test_histogram_without_labels),
      T(test_metrics_grouped_by_name),
      T(test_describe_is_idempotent),
      T(test_described_but_unused_renders_nothing),
      T(test_collector_called_at_render),
      T(test_reset_forgets_everything),
      T(test_large_output_grows),
      T(test_concurrent_adds),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  metrics_reset(); /* frees the registry for LeakSanitizer */
  return rc;
}
