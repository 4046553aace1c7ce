/* Unit tests for src/core/timeutil.c: RFC 3339 formatting, and the strict check a
 * device event's time must pass (issue 12: any string used to be accepted). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>
#include <stdbool.h>

#include "core/timeutil.h"

static void accepts_rfc3339_forms(void **state) {
  (void)state;
  static const char *good[] = {
      "2026-11-27T07:00:00.123Z",
      "2026-11-27T07:00:00Z",
      "2026-11-27t07:00:00z",
      "2026-11-27T07:00:00+01:00",
      "2026-11-27T07:00:00.123456789-05:30",
      "2024-02-29T00:00:00Z",
      "2026-12-31T23:59:60Z",
  };
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    assert_true(time_is_rfc3339(good[i]));
  char buf[32];
  assert_true(time_is_rfc3339(time_format_rfc3339(time_now_ms(), buf, sizeof(buf))));
}

static void refuses_everything_else(void **state) {
  (void)state;
  static const char *bad[] = {
      "",
      "yesterday",
      "1700000000",
      "2026-11-27",
      "2026-11-27 07:00:00Z",
      "2026-11-27T07:00:00",
      "2026-11-27T07:00Z",
      "2026-13-01T00:00:00Z",
      "2026-02-30T00:00:00Z",
      "2025-02-29T00:00:00Z",
      "2026-11-27T24:00:00Z",
      "2026-11-27T07:60:00Z",
      "2026-11-27T07:00:61Z",
      "2026-11-27T07:00:00.Z",
      "2026-11-27T07:00:00.1234567890Z",
      "2026-11-27T07:00:00+0100",
      "2026-11-27T07:00:00+24:00",
      "2026-11-27T07:00:00Zjunk",
      "2026-11-27T07:00:00\nZ",
      "+2026-11-27T07:00:00Z",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (time_is_rfc3339(bad[i])) fail_msg("accepted %s", bad[i]);
  assert_false(time_is_rfc3339(NULL));
}

/* A deadline carries nanoseconds over into seconds and never lies in the past. */
static void deadline_is_ms_from_now_and_normalized(void **state) {
  (void)state;
  struct timespec now, d;
  clock_gettime(CLOCK_REALTIME, &now);
  time_deadline(1999, &d);
  assert_true(d.tv_nsec >= 0 && d.tv_nsec < 1000000000L);
  int64_t diff_ms = (int64_t)(d.tv_sec - now.tv_sec) * 1000 + (d.tv_nsec - now.tv_nsec) / 1000000;
  assert_true(diff_ms >= 1999 && diff_ms < 2100);
  time_deadline(-5, &d);
  diff_ms = (int64_t)(d.tv_sec - now.tv_sec) * 1000 + (d.tv_nsec - now.tv_nsec) / 1000000;
  assert_true(diff_ms >= 0 && diff_ms < 100);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(accepts_rfc3339_forms),
      cmocka_unit_test(refuses_everything_else),
      cmocka_unit_test(deadline_is_ms_from_now_and_normalized),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
