/* Unit tests for the parts of src/store/store_pg.c that need no server: rewriting
 * `?` placeholders to $n (never inside literals, identifiers or comments) and
 * masking passwords in database URLs before they reach a log line. The backend
 * itself is exercised against a real PostgreSQL by `make e2e-pg`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "store/store_internal.h"

static void check_rewrite(const char *in, const char *want, int want_n) {
  char *out = NULL;
  int n = store__pg_rewrite(in, &out);
  assert_int_equal(n, want_n);
  assert_string_equal(out, want);
  free(out);
}

static void test_rewrite_numbers_placeholders(void **state) {
  (void)state;
  check_rewrite("SELECT 1", "SELECT 1", 0);
  check_rewrite("SELECT a FROM t WHERE b = ? AND (? IS NULL OR c = ?) LIMIT ?",
                "SELECT a FROM t WHERE b = $1 AND ($2 IS NULL OR c = $3) LIMIT $4", 4);
  char in[200] = "", want[300] = "";
  for (int i = 1; i <= 12; i++) {
    strcat(in, "?,");
    char one[8];
    snprintf(one, sizeof(one), "$%d,", i);
    strcat(want, one);
  }
  check_rewrite(in, want, 12);
}

static void test_rewrite_skips_quotes_and_comments(void **state) {
  (void)state;
  check_rewrite("SELECT '?', 'it''s ?', \"odd?name\" FROM t WHERE x = ?",
                "SELECT '?', 'it''s ?', \"odd?name\" FROM t WHERE x = $1", 1);
  check_rewrite("SELECT 1 -- why? because\nFROM t WHERE y = ?",
                "SELECT 1 -- why? because\nFROM t WHERE y = $1", 1);
  check_rewrite("SELECT 'devices/' || id FROM d WHERE o = ?",
                "SELECT 'devices/' || id FROM d WHERE o = $1", 1);
}

static void test_rewrite_refuses_too_many(void **state) {
  (void)state;
  char *in = malloc(1001 * 2 + 1);
  assert_non_null(in);
  in[0] = 0;
  for (int i = 0; i < 1000; i++)
    strcat(in, "?,");
  char *out = NULL;
  assert_int_equal(store__pg_rewrite(in, &out), -1);
  assert_null(out);
  free(in);
}

static void check_redact(const char *in, const char *want) {
  char out[512];
  store__pg_redact(in, out, sizeof(out));
  assert_string_equal(out, want);
}

static void test_redact_hides_passwords(void **state) {
  (void)state;
  check_redact("postgres://iotfin:s3cret@db.example:5432/iotfin",
               "postgres://iotfin:***@db.example:5432/iotfin");
  check_redact("postgresql://iotfin@127.0.0.1:5433/x?sslmode=require",
               "postgresql://iotfin@127.0.0.1:5433/x?sslmode=require");
  check_redact("postgres://u:p%40ss@h1:5432,h2:5432/db?target_session_attrs=read-write",
               "postgres://u:***@h1:5432,h2:5432/db?target_session_attrs=read-write");
  check_redact("postgres://h/db?user=u&password=hunter2&sslmode=disable",
               "postgres://h/db?user=u&password=***&sslmode=disable");
  check_redact("postgres://u:pw@h/db?password=other", "postgres://u:***@h/db?password=***");
  check_redact("postgres:///db", "postgres:///db");
  /* An @ in the path or query is not a user part. */
  check_redact("postgres://h/db?application_name=a@b", "postgres://h/db?application_name=a@b");
}

static void test_redact_truncates_safely(void **state) {
  (void)state;
  char out[16];
  store__pg_redact("postgres://user:secretsecret@host/db", out, sizeof(out));
  assert_null(strstr(out, "secret"));
  assert_true(strlen(out) < sizeof(out));
}

static void test_unknown_scheme_is_refused(void **state) {
  (void)state;
  store_t *s = (store_t *)1;
  assert_true(store_open("mysql://x", &s) < 0);
  assert_null(s);
}

static void test_unreachable_server_is_given_up(void **state) {
  (void)state;
  /* Port 1 on loopback refuses at once; a wait of 0 s means one try. */
  store_t *s = NULL;
  assert_true(store_open_wait("postgres://nobody:pw@127.0.0.1:1/none", 0, &s) < 0);
  assert_null(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rewrite_numbers_placeholders),
      cmocka_unit_test(test_rewrite_skips_quotes_and_comments),
      cmocka_unit_test(test_rewrite_refuses_too_many),
      cmocka_unit_test(test_redact_hides_passwords),
      cmocka_unit_test(test_redact_truncates_safely),
      cmocka_unit_test(test_unknown_scheme_is_refused),
      cmocka_unit_test(test_unreachable_server_is_given_up),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
