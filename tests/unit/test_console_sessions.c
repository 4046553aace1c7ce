/* Unit tests for src/services/console_sessions.c and console_type_pattern of
 * src/services/console.c: sessions open, check, expire, end and stay bounded; a check
 * racing a sign-out does not outlive it; type filters become LIKE patterns with
 * LIKE's own characters escaped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/timeutil.h"
#include "services/console.h"
#include "services/console_sessions.h"

#define T0 1000000

/* One real SQLite store for the whole file, in a temporary folder. */
static store_t *db;
static char dir[64];

static int open_store(void **state) {
  (void)state;
  char url[128];
  snprintf(dir, sizeof(dir), "/tmp/iotfin-console-XXXXXX");
  if (!mkdtemp(dir)) return -1;
  snprintf(url, sizeof(url), "sqlite:%s/t.db", dir);
  return store_open(url, &db);
}

static int close_store(void **state) {
  (void)state;
  store_close(&db);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_open_check_end(void **state) {
  (void)state;
  char sid[CONSOLE_SECRET_LEN + 1], csrf[CONSOLE_SECRET_LEN + 1], got[CONSOLE_SECRET_LEN + 1];
  int64_t exp, exp2;
  assert_int_equal(console_sessions_create(db, T0, sid, csrf, &exp), 0);
  assert_int_equal(strlen(sid), CONSOLE_SECRET_LEN);
  assert_string_not_equal(sid, csrf);
  assert_true(exp == T0 + CONSOLE_SESSION_TTL_MS);
  assert_int_equal(console_sessions_check(db, sid, T0 + 1, got, &exp2), 0);
  assert_string_equal(got, csrf);
  assert_true(exp2 == exp);
  /* The CSRF token is not a session id, and a near miss is no session. */
  assert_int_equal(console_sessions_check(db, csrf, T0 + 1, NULL, NULL), -ERR_UNAUTHENTICATED);
  char near[CONSOLE_SECRET_LEN + 1];
  memcpy(near, sid, sizeof(near));
  near[0] = near[0] == 'a' ? 'b' : 'a';
  assert_int_equal(console_sessions_check(db, near, T0 + 1, NULL, NULL), -ERR_UNAUTHENTICATED);
  assert_int_equal(console_sessions_check(db, "short", T0 + 1, NULL, NULL), -ERR_UNAUTHENTICATED);
  assert_int_equal(console_sessions_check(db, NULL, T0 + 1, NULL, NULL), -ERR_UNAUTHENTICATED);
  console_sessions_delete(db, sid);
  assert_int_equal(console_sessions_check(db, sid, T0 + 2, NULL, NULL), -ERR_UNAUTHENTICATED);
}

static void test_expiry(void **state) {
  (void)state;
  char sid[CONSOLE_SECRET_LEN + 1], csrf[CONSOLE_SECRET_LEN + 1];
  int64_t exp;
  console_sessions_create(db, T0, sid, csrf, &exp);
  assert_int_equal(console_sessions_check(db, sid, exp - 1, NULL, NULL), 0);
  assert_int_equal(console_sessions_check(db, sid, exp, NULL, NULL), -ERR_UNAUTHENTICATED);
}

static void test_bounded_oldest_gives_way(void **state) {
  (void)state;
  char first[CONSOLE_SECRET_LEN + 1], sid[CONSOLE_SECRET_LEN + 1], csrf[CONSOLE_SECRET_LEN + 1];
  int64_t exp;
  console_sessions_create(db, T0 * 10, first, csrf, &exp);
  for (int i = 1; i <= CONSOLE_SESSIONS_MAX; i++)
    console_sessions_create(db, T0 * 10 + i, sid, csrf, &exp);
  assert_int_equal(console_sessions_check(db, first, T0 * 10 + 100, NULL, NULL),
                   -ERR_UNAUTHENTICATED);
  assert_int_equal(console_sessions_check(db, sid, T0 * 10 + 100, NULL, NULL), 0);
}

typedef struct {
  const char *sid;
  int rc;
} signout_t;

static void *sign_out(void *arg) {
  signout_t *so = arg;
  so->rc = console_sessions_delete(db, so->sid);
  return NULL;
}

/* A sign-out waiting for its commit while another thread checks the session (the
 * console's open stream does): the check still finds the row, but once the sign-out
 * has returned, the session is gone, not remembered by that check. */
static void test_a_check_during_a_sign_out_does_not_outlive_it(void **state) {
  (void)state;
  char sid[CONSOLE_SECRET_LEN + 1], csrf[CONSOLE_SECRET_LEN + 1], path[128];
  int64_t exp, now = time_now_ms();
  assert_int_equal(console_sessions_create(db, now, sid, csrf, &exp), 0);
  /* Another connection holds the write lock, so the sign-out's delete waits. */
  sqlite3 *other;
  snprintf(path, sizeof(path), "%s/t.db", dir);
  assert_int_equal(sqlite3_open(path, &other), SQLITE_OK);
  assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  signout_t so = {sid, 1};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, sign_out, &so), 0);
  usleep(200 * 1000);
  assert_int_equal(so.rc, 1); /* still waiting */
  assert_int_equal(console_sessions_check(db, sid, now + 1, NULL, NULL), 0);
  assert_int_equal(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(other);
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_int_equal(so.rc, 0);
  assert_int_equal(console_sessions_check(db, sid, now + 2, NULL, NULL), -ERR_UNAUTHENTICATED);
}

static void test_type_pattern(void **state) {
  (void)state;
  char p[32];
  assert_int_equal(console_type_pattern("device.event.received", p, sizeof(p)), 0);
  assert_string_equal(p, "device.event.received");
  assert_int_equal(console_type_pattern("device.*", p, sizeof(p)), 0);
  assert_string_equal(p, "device.%");
  assert_int_equal(console_type_pattern("a_b%c\\*", p, sizeof(p)), 0);
  assert_string_equal(p, "a\\_b\\%c\\\\%");
  assert_int_equal(console_type_pattern("0123456789012345678901234567890123", p, sizeof(p)), -1);
  assert_string_equal(p, "");
}

int main(void) {
  if (sodium_init() < 0) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_open_check_end),
      cmocka_unit_test(test_expiry),
      cmocka_unit_test(test_bounded_oldest_gives_way),
      cmocka_unit_test(test_a_check_during_a_sign_out_does_not_outlive_it),
      cmocka_unit_test(test_type_pattern),
  };
  return cmocka_run_group_tests(tests, open_store, close_store);
}
