/* Unit tests for src/core/ids.c: UUIDv7 layout (RFC 9562), strict ordering of ids
 * from one process (also across threads), and random base64url tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ids.h"
#include "core/timeutil.h"

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1; /* upper case is not the canonical form */
}

/* Checks 8-4-4-4-12 lower-case hex, version 7 and variant 10xx. */
static void assert_uuid7(const char *u) {
  assert_int_equal(strlen(u), IDS_UUID_LEN - 1);
  for (int i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      assert_int_equal(u[i], '-');
    } else if (hexval(u[i]) < 0) {
      fail_msg("not lower-case hex at %d: %s", i, u);
    }
  }
  assert_int_equal(u[14], '7');
  int variant = hexval(u[19]);
  assert_int_equal(variant & 0xc, 0x8); /* 8, 9, a or b */
}

/* The 48-bit millisecond timestamp of a UUIDv7. */
static int64_t uuid_ms(const char *u) {
  int64_t ms = 0;
  for (int i = 0; i < 13; i++) {
    if (u[i] == '-') continue;
    ms = ms * 16 + hexval(u[i]);
  }
  return ms;
}

static void test_uuid7_format(void **state) {
  (void)state;
  char u[IDS_UUID_LEN];
  memset(u, 'x', sizeof(u));
  for (int i = 0; i < 1000; i++) {
    ids_uuid7(u);
    assert_uuid7(u);
  }
}

static void test_uuid7_carries_the_time(void **state) {
  (void)state;
  int64_t before = time_now_ms();
  char u[IDS_UUID_LEN];
  ids_uuid7(u);
  int64_t after = time_now_ms();
  /* The counter may borrow a millisecond or two after a burst, not more. */
  assert_in_range(uuid_ms(u), before, after + 2);
}

static void test_uuid7_strictly_increasing(void **state) {
  (void)state;
  enum { N = 10000 };
  char(*ids)[IDS_UUID_LEN] = malloc((size_t)N * IDS_UUID_LEN);
  assert_non_null(ids);
  for (int i = 0; i < N; i++)
    ids_uuid7(ids[i]);
  for (int i = 1; i < N; i++) {
    if (strcmp(ids[i - 1], ids[i]) >= 0)
      fail_msg("id %d not after id %d: %s then %s", i, i - 1, ids[i - 1], ids[i]);
    assert_true(uuid_ms(ids[i - 1]) <= uuid_ms(ids[i]));
  }
  free(ids);
}

/* More ids than the 12-bit counter holds, as fast as possible: the counter must
 * borrow the next millisecond rather than wrap. */
static void test_uuid7_counter_overflow(void **state) {
  (void)state;
  enum { N = 3 * 4096 + 7 };
  char prev[IDS_UUID_LEN], cur[IDS_UUID_LEN];
  ids_uuid7(prev);
  for (int i = 0; i < N; i++) {
    ids_uuid7(cur);
    if (strcmp(prev, cur) >= 0) fail_msg("not increasing: %s then %s", prev, cur);
    memcpy(prev, cur, sizeof(cur));
  }
}

#define NTHREADS 4
#define PER_THREAD 2000

static char thread_ids[NTHREADS * PER_THREAD][IDS_UUID_LEN];

static void *make_ids(void *arg) {
  int t = (int)(intptr_t)arg;
  for (int i = 0; i < PER_THREAD; i++)
    ids_uuid7(thread_ids[t * PER_THREAD + i]);
  return NULL;
}

static int cmp_ids(const void *a, const void *b) { return strcmp(a, b); }

static void test_uuid7_unique_across_threads(void **state) {
  (void)state;
  pthread_t th[NTHREADS];
  for (int t = 0; t < NTHREADS; t++)
    assert_int_equal(pthread_create(&th[t], NULL, make_ids, (void *)(intptr_t)t), 0);
  for (int t = 0; t < NTHREADS; t++)
    pthread_join(th[t], NULL);
  /* Each thread's own ids are increasing... */
  for (int t = 0; t < NTHREADS; t++)
    for (int i = 1; i < PER_THREAD; i++)
      assert_true(strcmp(thread_ids[t * PER_THREAD + i - 1], thread_ids[t * PER_THREAD + i]) < 0);
  /* ...and no two ids of the process are equal. */
  qsort(thread_ids, NTHREADS * PER_THREAD, IDS_UUID_LEN, cmp_ids);
  for (int i = 1; i < NTHREADS * PER_THREAD; i++)
    assert_true(strcmp(thread_ids[i - 1], thread_ids[i]) != 0);
}

static bool is_b64url(const char *s) {
  for (; *s; s++) {
    char c = *s;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_'))
      return false;
  }
  return true;
}

static void test_random_token_length_and_alphabet(void **state) {
  (void)state;
  /* base64 without padding: ceil(4n/3) characters for n bytes. */
  const size_t sizes[] = {1, 2, 3, 16, 24, 32, 33, 64, 128};
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    size_t n = sizes[i];
    char out[256];
    memset(out, '#', sizeof(out));
    ids_random_token(out, sizeof(out), n);
    assert_int_equal(strlen(out), (4 * n + 2) / 3);
    assert_true(is_b64url(out));
    assert_null(strchr(out, '='));
  }
}

static void test_random_token_exact_capacity(void **state) {
  (void)state;
  /* 32 bytes are 43 characters: a 44-byte buffer is enough, nothing is written past. */
  char buf[44 + 8];
  memset(buf, '#', sizeof(buf));
  ids_random_token(buf, 44, 32);
  assert_int_equal(strlen(buf), 43);
  for (size_t i = 44; i < sizeof(buf); i++)
    assert_int_equal(buf[i], '#');
}

static void test_random_tokens_differ(void **state) {
  (void)state;
  char a[64], b[64];
  ids_random_token(a, sizeof(a), 32);
  ids_random_token(b, sizeof(b), 32);
  assert_string_not_equal(a, b);
  /* Every character of the alphabet shows up over enough output: the encoding is
   * the URL-safe one, not standard base64 with + and /. */
  bool seen[128] = {false};
  for (int i = 0; i < 500; i++) {
    char t[200];
    ids_random_token(t, sizeof(t), 96);
    for (const char *p = t; *p; p++)
      seen[(unsigned char)*p & 127] = true;
  }
  assert_true(seen['-']);
  assert_true(seen['_']);
  assert_false(seen['+']);
  assert_false(seen['/']);
}

int main(void) {
  if (sodium_init() < 0) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_uuid7_format),
      cmocka_unit_test(test_uuid7_carries_the_time),
      cmocka_unit_test(test_uuid7_strictly_increasing),
      cmocka_unit_test(test_uuid7_counter_overflow),
      cmocka_unit_test(test_uuid7_unique_across_threads),
      cmocka_unit_test(test_random_token_length_and_alphabet),
      cmocka_unit_test(test_random_token_exact_capacity),
      cmocka_unit_test(test_random_tokens_differ),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
