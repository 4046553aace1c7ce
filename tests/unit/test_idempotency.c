/* Unit tests for src/services/idempotency.c with the services that record their
 * answer inside their own transaction: after a claim or a command under a key, the
 * key already replays that answer, byte for byte what the HTTP layer sends, with no
 * idem_finish of its own (a crash between work and answer cannot leave the work done
 * and the key free). On a real SQLite store in a temporary folder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "core/errors.h"
#include "services/devices.h"
#include "services/idempotency.h"

#define USER "u-idem-1"
#define ACTIVE "d-idem-active"

static app_t app;
static config_t cfg;
static char dir[64];

static int seed_tx(store_tx_t *tx, void *arg) {
  (void)arg;
  const char *ts = "2026-12-03T00:00:00Z";
  int rc = store_exec(tx, NULL,
                      "INSERT INTO users (id, type, email, name, status, created_at) "
                      "VALUES (?, 'local', 'idem@example.com', 'Idem', 'active', ?)",
                      "ss", USER, ts);
  if (rc < 0) return rc;
  rc = store_exec(tx, NULL,
                  "INSERT INTO devices (id, serial, status, owner_id, created_at) "
                  "VALUES (?, 'IDEM-ACTIVE', 'active', ?, ?)",
                  "sss", ACTIVE, USER, ts);
  if (rc < 0) return rc;
  rc = store_exec(tx, NULL,
                  "INSERT INTO devices (id, serial, status, created_at) "
                  "VALUES ('d-idem-free', 'IDEM-FREE', 'unclaimed', ?)",
                  "s", ts);
  return rc < 0 ? rc : 0;
}

static int open_store(void **state) {
  (void)state;
  char url[128];
  snprintf(dir, sizeof(dir), "/tmp/iotfin-idem-XXXXXX");
  if (!mkdtemp(dir)) return -1;
  snprintf(url, sizeof(url), "sqlite:%s/t.db", dir);
  cfg.command_ttl_s = 300;
  app.cfg = &cfg;
  snprintf(app.instance_id, sizeof(app.instance_id), "unit-idem");
  if (store_open(url, &app.store) != 0) return -1;
  return store_write(app.store, seed_tx, NULL) < 0 ? -1 : 0;
}

static int close_store(void **state) {
  (void)state;
  store_close(&app.store);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* The key replays status and exactly the JSON of out. */
static void assert_replays_text(const char *key, const char *route, int status, const char *want) {
  idem_replay_t replay;
  assert_int_equal(idem_begin(&app, USER, key, route, "h", &replay), 1);
  assert_int_equal(replay.status, status);
  assert_string_equal(replay.response, want);
  free(replay.response);
}

static void assert_replays(const char *key, const char *route, int status, json_t *out) {
  char *want = json_dumps(out, JSON_COMPACT);
  assert_replays_text(key, route, status, want);
  free(want);
}

/* Opens key on route as the HTTP middleware does, and hands it on as a request would. */
static idem_pending_t begin_key(const char *key, const char *route) {
  idem_replay_t replay;
  assert_int_equal(idem_begin(&app, USER, key, route, "h", &replay), 0);
  return (idem_pending_t){USER, key, 0};
}

static void test_a_command_commits_its_answer_with_it(void **state) {
  (void)state;
  const char *route = "POST /v1/devices/" ACTIVE "/commands";
  idem_pending_t p = begin_key("k-command", route);
  json_t *body = json_pack("{s:s,s:{s:i,s:s}}", "type", "unit.ping", "payload", "n", 1, "s",
                           "tab\t\"q\" caf\xc3\xa9");
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(devices_command_create(&app, USER, ACTIVE, body, &p, &text, &len), 0);
  assert_int_equal(p.status, 202);
  assert_int_equal(len, strlen(text));
  assert_replays_text("k-command", route, 202, text);
  /* The answer, written as text without a read, is the command as a read shows it. */
  json_t *answer = json_loads(text, 0, NULL), *read = NULL;
  assert_non_null(answer);
  assert_int_equal(devices_command_get(&app, USER, ACTIVE,
                                       json_string_value(json_object_get(answer, "id")), &read),
                   0);
  char *want = json_dumps(read, JSON_COMPACT);
  assert_string_equal(text, want);
  free(want);
  json_decref(read);
  json_decref(answer);
  free(text);
  json_decref(body);
}

static void test_a_claim_commits_its_answer_with_it(void **state) {
  (void)state;
  idem_pending_t p = begin_key("k-claim", "POST /v1/devices");
  json_t *out = NULL;
  assert_int_equal(devices_claim(&app, USER, "IDEM-FREE", &p, &out), 0);
  assert_int_equal(p.status, 202);
  assert_replays("k-claim", "POST /v1/devices", 202, out);
  json_decref(out);
}

/* Work that fails writes no answer: the key stays pending for the HTTP layer,
 * which records the error reply (or frees the key on a 5xx) itself. */
static void test_work_that_fails_leaves_the_key_to_the_http_layer(void **state) {
  (void)state;
  idem_pending_t p = begin_key("k-fail", "POST /v1/devices");
  json_t *out = NULL;
  assert_int_equal(devices_claim(&app, USER, "NO-SUCH-SERIAL", &p, &out), -ERR_UNKNOWN_SERIAL);
  assert_null(out);
  assert_int_equal(p.status, 0);
  idem_replay_t replay;
  assert_int_equal(idem_begin(&app, USER, "k-fail", "POST /v1/devices", "h", &replay),
                   -ERR_CONFLICT);
}

/* Without a key the services behave as before. */
static void test_no_key_no_record(void **state) {
  (void)state;
  json_t *body = json_pack("{s:s,s:{}}", "type", "unit.ping", "payload");
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(devices_command_create(&app, USER, ACTIVE, body, NULL, &text, &len), 0);
  assert_non_null(text);
  free(text);
  json_decref(body);
}

int main(void) {
  if (sodium_init() < 0) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_command_commits_its_answer_with_it),
      cmocka_unit_test(test_a_claim_commits_its_answer_with_it),
      cmocka_unit_test(test_work_that_fails_leaves_the_key_to_the_http_layer),
      cmocka_unit_test(test_no_key_no_record),
  };
  return cmocka_run_group_tests(tests, open_store, close_store);
}
