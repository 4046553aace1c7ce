/* Unit tests for src/bus/policy.c: the pure queue rules. Backoff (exponential from
 * base, capped, equal jitter within [d/2, d]) and the next state of a message for
 * each handler outcome (done, not ready, failed, failed permanently). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdbool.h>
#include <string.h>

#include "bus/policy.h"

#define NOW 1000000000LL

static bus_policy_t policy(int64_t base, int64_t max, int max_receives, int64_t nr_max) {
  bus_policy_t p = {base, max, max_receives, nr_max};
  return p;
}

static bus_outcome_t outcome(bus_result_t r, int64_t delay, const char *reason) {
  bus_outcome_t o;
  memset(&o, 0, sizeof(o));
  o.result = r;
  o.delay_ms = delay;
  if (reason) strncpy(o.reason, reason, sizeof(o.reason) - 1);
  return o;
}

/* The undelayed (no jitter) delay before retry `receives`: min(base * 2^(n-1), max). */
static int64_t nominal(int64_t base, int64_t max, int receives) {
  int64_t d = base;
  for (int i = 1; i < receives && d < max; i++)
    d *= 2;
  return d > max ? max : d;
}

/* ---- backoff -------------------------------------------------------------------- */

static void test_backoff_grows_exponentially_from_base(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 100000, 5, 0);
  /* rnd just below 1 gives the full delay d. */
  assert_int_equal(bus_policy_backoff(&p, 1, 0.999), 100);
  assert_int_equal(bus_policy_backoff(&p, 2, 0.999), 200);
  assert_int_equal(bus_policy_backoff(&p, 3, 0.999), 400);
  assert_int_equal(bus_policy_backoff(&p, 4, 0.999), 800);
  assert_int_equal(bus_policy_backoff(&p, 5, 0.999), 1600);
  /* rnd 0 gives the fixed half: d - d/2. */
  assert_int_equal(bus_policy_backoff(&p, 1, 0.0), 50);
  assert_int_equal(bus_policy_backoff(&p, 2, 0.0), 100);
  assert_int_equal(bus_policy_backoff(&p, 3, 0.0), 200);
  assert_int_equal(bus_policy_backoff(&p, 4, 0.0), 400);
}

static void test_backoff_is_capped_at_max(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 5, 0);
  assert_int_equal(bus_policy_backoff(&p, 4, 0.999), 800);
  assert_int_equal(bus_policy_backoff(&p, 5, 0.999), 1000); /* 1600 capped */
  assert_int_equal(bus_policy_backoff(&p, 6, 0.999), 1000);
  assert_int_equal(bus_policy_backoff(&p, 50, 0.999), 1000);
  assert_int_equal(bus_policy_backoff(&p, 1000000, 0.999), 1000); /* no overflow, no hang */
  assert_int_equal(bus_policy_backoff(&p, 1000000, 0.0), 500);
  for (int n = 1; n < 200; n++)
    assert_true(bus_policy_backoff(&p, n, 0.999) <= 1000);
  /* A max that is not a power-of-two multiple of base is still the cap. */
  bus_policy_t q = policy(30, 100, 5, 0);
  assert_int_equal(bus_policy_backoff(&q, 1, 0.999), 30);
  assert_int_equal(bus_policy_backoff(&q, 2, 0.999), 60);
  assert_int_equal(bus_policy_backoff(&q, 3, 0.999), 100);
  assert_int_equal(bus_policy_backoff(&q, 4, 0.999), 100);
}

static void test_backoff_jitter_stays_within_half_and_full(void **state) {
  (void)state;
  const int64_t bases[] = {1, 2, 3, 7, 10, 20, 99, 100, 1000};
  const int64_t maxes[] = {1, 5, 50, 101, 1000, 60000};
  const double rnds[] = {0.0, 0.001, 0.25, 0.5, 0.75, 0.9, 0.999, 0.999999};
  for (size_t b = 0; b < sizeof(bases) / sizeof(bases[0]); b++) {
    for (size_t m = 0; m < sizeof(maxes) / sizeof(maxes[0]); m++) {
      if (maxes[m] < bases[b]) continue;
      bus_policy_t p = policy(bases[b], maxes[m], 5, 0);
      for (int n = 1; n <= 20; n++) {
        int64_t d = nominal(bases[b], maxes[m], n);
        int64_t prev = -1;
        for (size_t r = 0; r < sizeof(rnds) / sizeof(rnds[0]); r++) {
          int64_t got = bus_policy_backoff(&p, n, rnds[r]);
          /* d/2 <= got <= d, with d/2 rounded up (the fixed half is d - d/2). */
          assert_true(2 * got >= d);
          assert_true(got <= d);
          assert_true(got >= prev); /* monotonic in rnd */
          prev = got;
        }
        assert_int_equal(bus_policy_backoff(&p, n, 0.0), d - d / 2);
      }
    }
  }
}

static void test_backoff_jitter_spreads(void **state) {
  (void)state;
  bus_policy_t p = policy(1000, 1000, 5, 0);
  int64_t lo = bus_policy_backoff(&p, 1, 0.0);
  int64_t mid = bus_policy_backoff(&p, 1, 0.5);
  int64_t hi = bus_policy_backoff(&p, 1, 0.999);
  assert_int_equal(lo, 500);
  assert_true(mid > lo && mid < hi);
  assert_in_range(mid, 740, 760);
  assert_int_equal(hi, 1000);
}

static void test_backoff_receives_below_one_is_one(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 5, 0);
  for (int r = 0; r < 2; r++) {
    double rnd = r ? 0.999 : 0.0;
    int64_t one = bus_policy_backoff(&p, 1, rnd);
    assert_int_equal(bus_policy_backoff(&p, 0, rnd), one);
    assert_int_equal(bus_policy_backoff(&p, -1, rnd), one);
    assert_int_equal(bus_policy_backoff(&p, -1000000, rnd), one);
  }
  assert_int_equal(bus_policy_backoff(&p, 0, 0.999), 100);
}

/* ---- next state ----------------------------------------------------------------- */

static void test_done_deletes(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 3, 60000);
  bus_outcome_t o = outcome(BUS_DONE, 0, NULL);
  for (int n = 1; n <= 10; n++) {
    bus_next_t next = bus_policy_next(&p, &o, n, NOW - 1000000, NOW, 0.5);
    assert_int_equal(next.kind, BUS_NEXT_DELETE);
  }
  /* Even past the not-ready deadline and with retry-forever: done is done. */
  bus_policy_t forever = policy(100, 1000, 0, 1);
  bus_next_t next = bus_policy_next(&forever, &o, 1, 0, NOW, 0.0);
  assert_int_equal(next.kind, BUS_NEXT_DELETE);
}

static void test_not_ready_retries_at_delay_without_counting(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 3, 60000);
  bus_outcome_t o = outcome(BUS_NOT_READY, 250, NULL);
  bus_next_t next = bus_policy_next(&p, &o, 1, NOW - 10, NOW, 0.5);
  assert_int_equal(next.kind, BUS_NEXT_RETRY);
  assert_int_equal(next.visible_at_ms, NOW + 250);
  assert_false(next.count_receive);
  /* The delay is the handler's, not the backoff: no jitter. */
  for (int r = 0; r < 3; r++) {
    next = bus_policy_next(&p, &o, 1, NOW - 10, NOW, r * 0.45);
    assert_int_equal(next.visible_at_ms, NOW + 250);
  }
}

static void test_not_ready_never_dead_letters_on_receives(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 3, 60000);
  bus_outcome_t o = outcome(BUS_NOT_READY, 5, NULL);
  /* At, and far past, max receives: still not a failure. */
  for (int n = 1; n <= 100; n++) {
    bus_next_t next = bus_policy_next(&p, &o, n, NOW - 10, NOW, 0.999);
    assert_int_equal(next.kind, BUS_NEXT_RETRY);
    assert_false(next.count_receive);
    assert_int_equal(next.visible_at_ms, NOW + 5);
  }
}

static void test_not_ready_without_delay_waits_base(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 3, 60000);
  bus_outcome_t o = outcome(BUS_NOT_READY, 0, NULL);
  bus_next_t next = bus_policy_next(&p, &o, 1, NOW, NOW, 0.0);
  assert_int_equal(next.kind, BUS_NEXT_RETRY);
  assert_false(next.count_receive);
  assert_true(next.visible_at_ms > NOW); /* never a busy loop */
  assert_int_equal(next.visible_at_ms, NOW + 100);
  o.delay_ms = -5;
  next = bus_policy_next(&p, &o, 1, NOW, NOW, 0.0);
  assert_true(next.visible_at_ms > NOW);
}

static void test_not_ready_dead_after_deadline_since_creation(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 3, 60000);
  bus_outcome_t o = outcome(BUS_NOT_READY, 1000, NULL);
  /* Just inside the window: retry. */
  bus_next_t next = bus_policy_next(&p, &o, 1, NOW - 59999, NOW, 0.5);
  assert_int_equal(next.kind, BUS_NEXT_RETRY);
  /* At the deadline and past it: dead, with the policy's own reason. */
  next = bus_policy_next(&p, &o, 1, NOW - 60000, NOW, 0.5);
  assert_int_equal(next.kind, BUS_NEXT_DEAD);
  assert_non_null(next.why);
  assert_true(strlen(next.why) > 0);
  next = bus_policy_next(&p, &o, 1, NOW - 10 * 60000, NOW, 0.5);
  assert_int_equal(next.kind, BUS_NEXT_DEAD);
  assert_non_null(next.why);
  /* The deadline counts from creation, not from the last receive: a message with
   * only one receive is as dead as one with many. */
  next = bus_policy_next(&p, &o, 40, NOW - 60001, NOW, 0.5);
  assert_int_equal(next.kind, BUS_NEXT_DEAD);
}

static void test_not_ready_without_deadline_never_dead(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 3, 0);
  bus_outcome_t o = outcome(BUS_NOT_READY, 10, NULL);
  bus_next_t next = bus_policy_next(&p, &o, 1000, 0, NOW, 0.5);
  assert_int_equal(next.kind, BUS_NEXT_RETRY);
  assert_false(next.count_receive);
}

static void test_failed_below_max_retries_with_backoff(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 5, 60000);
  bus_outcome_t o = outcome(BUS_FAILED, 0, "partner answered 500");
  for (int n = 1; n < 5; n++) {
    int64_t d = nominal(100, 1000, n);
    bus_next_t lo = bus_policy_next(&p, &o, n, NOW - 10, NOW, 0.0);
    bus_next_t hi = bus_policy_next(&p, &o, n, NOW - 10, NOW, 0.999);
    assert_int_equal(lo.kind, BUS_NEXT_RETRY);
    assert_int_equal(hi.kind, BUS_NEXT_RETRY);
    assert_true(lo.count_receive);
    assert_true(hi.count_receive);
    assert_int_equal(lo.visible_at_ms, NOW + bus_policy_backoff(&p, n, 0.0));
    assert_int_equal(hi.visible_at_ms, NOW + bus_policy_backoff(&p, n, 0.999));
    assert_int_equal(lo.visible_at_ms, NOW + d - d / 2);
    assert_int_equal(hi.visible_at_ms, NOW + d);
  }
  /* Later receives wait longer. */
  bus_next_t a = bus_policy_next(&p, &o, 1, NOW, NOW, 0.999);
  bus_next_t b = bus_policy_next(&p, &o, 3, NOW, NOW, 0.999);
  assert_true(b.visible_at_ms > a.visible_at_ms);
}

static void test_failed_at_max_receives_is_dead(void **state) {
  (void)state;
  bus_policy_t p = policy(100, 1000, 3, 60000);
  bus_outcome_t o = outcome(BUS_FAILED, 0, "partner answered 500");
  assert_int_equal(bus_policy_next(&p, &o, 1, NOW, NOW, 0.5).kind, BUS_NEXT_RETRY);
  assert_int_equal(bus_policy_next(&p, &o, 2, NOW, NOW, 0.5).kind, BUS_NEXT_RETRY);
  bus_next_t next = bus_policy_next(&p, &o, 3, NOW, NOW, 0.5);
  assert_int_equal(next.kind, BUS_NEXT_DEAD);
  /* The handler's reason is kept (the policy does not substitute its own). */
  assert_null(next.why);
  /* Past max (e.g. the visibility timeout gave extra receives): dead too. */
  assert_int_equal(bus_policy_next(&p, &o, 4, NOW, NOW, 0.5).kind, BUS_NEXT_DEAD);
  assert_int_equal(bus_policy_next(&p, &o, 99, NOW, NOW, 0.5).kind, BUS_NEXT_DEAD);
  /* max_receives 1: the first failure is the last. */
  bus_policy_t one = policy(100, 1000, 1, 60000);
  assert_int_equal(bus_policy_next(&one, &o, 1, NOW, NOW, 0.5).kind, BUS_NEXT_DEAD);
}

static void test_failed_retry_forever_never_dead(void **state) {
  (void)state;
  bus_outcome_t o = outcome(BUS_FAILED, 0, "bank unavailable");
  for (int mr = -1; mr <= 0; mr++) {
    bus_policy_t p = policy(100, 1000, mr, 60000);
    for (int n = 1; n <= 10000; n *= 3) {
      bus_next_t next = bus_policy_next(&p, &o, n, NOW - 10 * 86400000LL, NOW, 0.5);
      assert_int_equal(next.kind, BUS_NEXT_RETRY);
      assert_true(next.count_receive);
      assert_true(next.visible_at_ms > NOW);
      assert_true(next.visible_at_ms <= NOW + 1000);
    }
  }
}

static void test_failed_permanent_is_dead_at_once(void **state) {
  (void)state;
  bus_outcome_t o = outcome(BUS_FAILED_PERMANENT, 0, "KYC refused");
  bus_policy_t p = policy(100, 1000, 3, 60000);
  bus_next_t next = bus_policy_next(&p, &o, 1, NOW, NOW, 0.5);
  assert_int_equal(next.kind, BUS_NEXT_DEAD);
  assert_null(next.why); /* the handler's reason is the last error */
  /* Retry-forever queues too: permanent is permanent. */
  bus_policy_t forever = policy(100, 1000, 0, 0);
  assert_int_equal(bus_policy_next(&forever, &o, 1, NOW, NOW, 0.5).kind, BUS_NEXT_DEAD);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backoff_grows_exponentially_from_base),
      cmocka_unit_test(test_backoff_is_capped_at_max),
      cmocka_unit_test(test_backoff_jitter_stays_within_half_and_full),
      cmocka_unit_test(test_backoff_jitter_spreads),
      cmocka_unit_test(test_backoff_receives_below_one_is_one),
      cmocka_unit_test(test_done_deletes),
      cmocka_unit_test(test_not_ready_retries_at_delay_without_counting),
      cmocka_unit_test(test_not_ready_never_dead_letters_on_receives),
      cmocka_unit_test(test_not_ready_without_delay_waits_base),
      cmocka_unit_test(test_not_ready_dead_after_deadline_since_creation),
      cmocka_unit_test(test_not_ready_without_deadline_never_dead),
      cmocka_unit_test(test_failed_below_max_retries_with_backoff),
      cmocka_unit_test(test_failed_at_max_receives_is_dead),
      cmocka_unit_test(test_failed_retry_forever_never_dead),
      cmocka_unit_test(test_failed_permanent_is_dead_at_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
