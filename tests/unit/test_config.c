/* Unit tests for src/core/config.c: config_load reads through a getter, so each test
 * fills a small name=value table and passes a fake getenv backed by it. Defaults are
 * those of CONTRACT section 1; every bad value must fail naming its setting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "core/config.h"

#define MAX_VARS 16

/* The fake environment; reset before each test. */
static struct { const char *name, *value; } env[MAX_VARS];
static int nenv;

static const char *fake_getenv(const char *name) {
  for (int i = 0; i < nenv; i++)
    if (strcmp(env[i].name, name) == 0) return env[i].value;
  return NULL;
}

static void set(const char *name, const char *value) {
  assert_true(nenv < MAX_VARS);
  env[nenv].name = name;
  env[nenv].value = value;
  nenv++;
}

static int reset_env(void **state) {
  (void)state;
  nenv = 0;
  return 0;
}

static config_t cfg;
static char err[256];

static int load(void) {
  err[0] = 0;
  return config_load(&cfg, fake_getenv, err, sizeof(err));
}

/* Loads with one variable set and expects failure naming that variable. */
static void expect_bad(const char *name, const char *value) {
  nenv = 0;
  set(name, value);
  int rc = load();
  if (rc != -1) fail_msg("%s=%s was accepted", name, value);
  if (!strstr(err, name)) fail_msg("message for %s=%s does not name it: %s", name, value, err);
}

/* Loads with one variable set and expects success. */
static void expect_good(const char *name, const char *value) {
  nenv = 0;
  set(name, value);
  if (load() != 0) fail_msg("%s=%s was refused: %s", name, value, err);
}

static void test_defaults(void **state) {
  (void)state;
  assert_int_equal(load(), 0);
  assert_string_equal(cfg.listen_host, "127.0.0.1");
  assert_int_equal(cfg.listen_port, 8080);
  assert_string_equal(cfg.data_dir, "./iotfin-data");
  assert_string_equal(cfg.db_url, "sqlite:./iotfin-data/iotfin.db");
  assert_true(cfg.broker_managed);
  assert_string_equal(cfg.broker_url, "");
  assert_string_equal(cfg.mqtt_host, "127.0.0.1");
  assert_int_equal(cfg.mqtt_port, 1883);
  assert_string_equal(cfg.admin_token, ""); /* generated later into the data dir */
  assert_string_equal(cfg.smtp_url, "");    /* .eml files */
  assert_string_equal(cfg.mail_from, "iotfin@localhost");
  assert_string_equal(cfg.ops_email, "ops@localhost");
  assert_true(cfg.mock);
  assert_string_equal(cfg.mock_dir, "./mocks");
  assert_int_equal(cfg.retry_base_ms, 1000);
  assert_int_equal(cfg.retry_max_ms, 300000);
  assert_int_equal(cfg.max_receives, 10);
  assert_int_equal(cfg.visibility_timeout_ms, 30000);
  assert_int_equal(cfg.kyc_poll_ms, 60000);
  assert_int_equal(cfg.command_ttl_s, 300);
  assert_int_equal(cfg.access_ttl_s, 900);
  assert_int_equal(cfg.device_token_ttl_s, 86400);
  assert_int_equal(cfg.auth_rate, 60);
  assert_int_equal(cfg.password_hash_mib, 64);
  for (int i = 0; i < CONFIG_PARTNER_COUNT; i++) {
    assert_string_equal(cfg.partners[i].proxy, "");
    assert_int_equal(cfg.partners[i].timeout_ms, 5000);
  }
}

static void test_partner_defaults_while_mock_on(void **state) {
  (void)state;
  const char *names[] = {"kyc", "identity", "supplier", "bank"};
  assert_int_equal(load(), 0);
  for (int i = 0; i < CONFIG_PARTNER_COUNT; i++) {
    char want[64];
    snprintf(want, sizeof(want), "dev-secret-%s", names[i]);
    assert_string_equal(cfg.partners[i].secret, want);
    assert_string_equal(cfg.partners[i].url, ""); /* empty: the mock */
  }
  /* An explicit secret or URL wins over the mock default. */
  set("IOTFIN_PARTNER_BANK_SECRET", "s3cret");
  set("IOTFIN_PARTNER_KYC_URL", "https://kyc.example/api");
  assert_int_equal(load(), 0);
  assert_string_equal(cfg.partners[PARTNER_BANK].secret, "s3cret");
  assert_string_equal(cfg.partners[PARTNER_KYC].url, "https://kyc.example/api");
  assert_string_equal(cfg.partners[PARTNER_KYC].secret, "dev-secret-kyc");
}

static void test_no_dev_secrets_without_mock(void **state) {
  (void)state;
  set("IOTFIN_MOCK", "off");
  set("IOTFIN_PARTNER_SUPPLIER_SECRET", "sup");
  assert_int_equal(load(), 0);
  assert_false(cfg.mock);
  assert_string_equal(cfg.partners[PARTNER_KYC].secret, "");
  assert_string_equal(cfg.partners[PARTNER_IDENTITY].secret, "");
  assert_string_equal(cfg.partners[PARTNER_SUPPLIER].secret, "sup");
  assert_string_equal(cfg.partners[PARTNER_BANK].secret, "");
  for (int i = 0; i < CONFIG_PARTNER_COUNT; i++)
    assert_string_equal(cfg.partners[i].url, "");
}

static void test_explicit_values(void **state) {
  (void)state;
  set("IOTFIN_LISTEN", "0.0.0.0:0");
  set("IOTFIN_DATA_DIR", "/var/lib/iotfin");
  set("IOTFIN_BROKER", "mqtt://user:pw@broker.local:8883");
  set("IOTFIN_MQTT_LISTEN", "127.0.0.1:0");
  set("IOTFIN_ADMIN_TOKEN", "0123456789abcdef");
  set("IOTFIN_SMTP_URL", "smtp://mail.local:25");
  set("IOTFIN_PARTNER_IDENTITY_PROXY", "http://proxy:3128");
  set("IOTFIN_PARTNER_IDENTITY_TIMEOUT_MS", "250");
  set("IOTFIN_RETRY_BASE_MS", "10");
  set("IOTFIN_RETRY_MAX_MS", "10");
  assert_int_equal(load(), 0);
  assert_string_equal(cfg.listen_host, "0.0.0.0");
  assert_int_equal(cfg.listen_port, 0);
  assert_string_equal(cfg.data_dir, "/var/lib/iotfin");
  assert_string_equal(cfg.db_url, "sqlite:/var/lib/iotfin/iotfin.db");
  assert_false(cfg.broker_managed);
  assert_string_equal(cfg.broker_url, "mqtt://user:pw@broker.local:8883");
  assert_int_equal(cfg.mqtt_port, 0);
  assert_string_equal(cfg.admin_token, "0123456789abcdef");
  assert_string_equal(cfg.smtp_url, "smtp://mail.local:25");
  assert_string_equal(cfg.partners[PARTNER_IDENTITY].proxy, "http://proxy:3128");
  assert_int_equal(cfg.partners[PARTNER_IDENTITY].timeout_ms, 250);
  assert_int_equal(cfg.partners[PARTNER_BANK].timeout_ms, 5000);
  assert_int_equal(cfg.retry_base_ms, 10);
  assert_int_equal(cfg.retry_max_ms, 10);
}

static void test_ipv6_listen(void **state) {
  (void)state;
  set("IOTFIN_LISTEN", "[::1]:0");
  assert_int_equal(load(), 0);
  assert_string_equal(cfg.listen_host, "::1");
  assert_int_equal(cfg.listen_port, 0);

  nenv = 0;
  set("IOTFIN_MQTT_LISTEN", "[fe80::1]:18830");
  assert_int_equal(load(), 0);
  assert_string_equal(cfg.mqtt_host, "fe80::1");
  assert_int_equal(cfg.mqtt_port, 18830);
}

static void test_bad_listen(void **state) {
  (void)state;
  const char *bad[] = {"",           "localhost", "localhost:", ":8080", "host:port", "host:-1",
                       "host:65536", "host:80x",  "[::1]",      "[]:80", "[::1:80"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    expect_bad("IOTFIN_LISTEN", bad[i]);
    expect_bad("IOTFIN_MQTT_LISTEN", bad[i]);
  }
  expect_good("IOTFIN_LISTEN", "host:65535");
}

static void test_bad_db(void **state) {
  (void)state;
  expect_bad("IOTFIN_DB", "");
  expect_bad("IOTFIN_DB", "sqlite:");
  expect_bad("IOTFIN_DB", "mysql://x");
  expect_bad("IOTFIN_DB", "/tmp/x.db");
  expect_bad("IOTFIN_DB", "SQLITE:/tmp/x.db");
  expect_good("IOTFIN_DB", "sqlite:/tmp/x.db");
  assert_string_equal(cfg.db_url, "sqlite:/tmp/x.db");
  expect_good("IOTFIN_DB", "postgres://u@h/db");
  expect_good("IOTFIN_DB", "postgresql://u@h/db");
}

static void test_bad_broker(void **state) {
  (void)state;
  const char *bad[] = {"",           "unmanaged",      "tcp://h:1883", "mqtt://",     "mqtt://h",
                       "mqtt://h:0", "mqtt://h:99999", "mqtt://u:p@h", "mqtt://:1883"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    expect_bad("IOTFIN_BROKER", bad[i]);
  expect_good("IOTFIN_BROKER", "managed");
  assert_true(cfg.broker_managed);
  expect_good("IOTFIN_BROKER", "mqtt://h:1883");
  assert_false(cfg.broker_managed);
}

static void test_bad_mock(void **state) {
  (void)state;
  const char *bad[] = {"", "yes", "true", "1", "ON", "Off", "on "};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    expect_bad("IOTFIN_MOCK", bad[i]);
  expect_good("IOTFIN_MOCK", "on");
  assert_true(cfg.mock);
  expect_good("IOTFIN_MOCK", "off");
  assert_false(cfg.mock);
}

static void test_bad_other_strings(void **state) {
  (void)state;
  expect_bad("IOTFIN_DATA_DIR", "");
  expect_bad("IOTFIN_ADMIN_TOKEN", "short");
  expect_bad("IOTFIN_ADMIN_TOKEN", "0123456789abcde"); /* 15 */
  expect_bad("IOTFIN_SMTP_URL", "mail.local:25");
  expect_bad("IOTFIN_MAIL_FROM", "nobody");
  expect_bad("IOTFIN_OPS_EMAIL", "ops");
  expect_bad("IOTFIN_PARTNER_KYC_URL", "ftp://kyc");
  expect_bad("IOTFIN_PARTNER_BANK_URL", "");
  expect_bad("IOTFIN_PARTNER_SUPPLIER_SECRET", "");
  expect_good("IOTFIN_SMTP_URL", ""); /* empty: the same as unset */
  expect_good("IOTFIN_SMTP_URL", "smtps://mail.local:465");
}

static void test_too_long_values(void **state) {
  (void)state;
  char big[2000];
  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = 0;
  expect_bad("IOTFIN_DATA_DIR", big);
  expect_bad("IOTFIN_MOCK_DIR", big);
  expect_bad("IOTFIN_PARTNER_IDENTITY_PROXY", big);
  char url[2000];
  snprintf(url, sizeof(url), "https://%s", big);
  expect_bad("IOTFIN_PARTNER_IDENTITY_URL", url);
  expect_bad("IOTFIN_PARTNER_IDENTITY_SECRET", big);
  char host[600];
  memset(host, 'h', 300);
  strcpy(host + 300, ":80");
  expect_bad("IOTFIN_LISTEN", host);
}

static void test_bad_numbers(void **state) {
  (void)state;
  const char *names[] = {"IOTFIN_RETRY_BASE_MS",
                         "IOTFIN_RETRY_MAX_MS",
                         "IOTFIN_MAX_RECEIVES",
                         "IOTFIN_VISIBILITY_TIMEOUT_MS",
                         "IOTFIN_KYC_POLL_MS",
                         "IOTFIN_COMMAND_TTL_S",
                         "IOTFIN_ACCESS_TTL_S",
                         "IOTFIN_DEVICE_TOKEN_TTL_S",
                         "IOTFIN_AUTH_RATE",
                         "IOTFIN_PASSWORD_HASH_MIB",
                         "IOTFIN_PARTNER_KYC_TIMEOUT_MS",
                         "IOTFIN_PARTNER_BANK_TIMEOUT_MS"};
  const char *bad[] = {"", "abc", "10x", "1.5", "0", "-1", "99999999999999999999999", "1e3"};
  for (size_t n = 0; n < sizeof(names) / sizeof(names[0]); n++)
    for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++)
      expect_bad(names[n], bad[b]);
}

static void test_number_bounds(void **state) {
  (void)state;
  expect_good("IOTFIN_MAX_RECEIVES", "1000");
  assert_int_equal(cfg.max_receives, 1000);
  expect_bad("IOTFIN_MAX_RECEIVES", "1001");
  expect_good("IOTFIN_VISIBILITY_TIMEOUT_MS", "100");
  expect_bad("IOTFIN_VISIBILITY_TIMEOUT_MS", "99");
  expect_good("IOTFIN_KYC_POLL_MS", "10");
  expect_bad("IOTFIN_KYC_POLL_MS", "9");
  expect_good("IOTFIN_COMMAND_TTL_S", "86400");
  expect_bad("IOTFIN_COMMAND_TTL_S", "86401");
  expect_good("IOTFIN_PARTNER_KYC_TIMEOUT_MS", "600000");
  assert_int_equal(cfg.partners[PARTNER_KYC].timeout_ms, 600000);
  expect_bad("IOTFIN_PARTNER_KYC_TIMEOUT_MS", "600001");
  expect_good("IOTFIN_PASSWORD_HASH_MIB", "19");
  assert_int_equal(cfg.password_hash_mib, 19);
  expect_bad("IOTFIN_PASSWORD_HASH_MIB", "18"); /* below OWASP's floor for 2 passes */
  expect_good("IOTFIN_PASSWORD_HASH_MIB", "4096");
  expect_bad("IOTFIN_PASSWORD_HASH_MIB", "4097");
}

static void test_retry_max_below_base(void **state) {
  (void)state;
  set("IOTFIN_RETRY_BASE_MS", "5000");
  set("IOTFIN_RETRY_MAX_MS", "4999");
  assert_int_equal(load(), -1);
  assert_non_null(strstr(err, "IOTFIN_RETRY_MAX_MS"));
  assert_non_null(strstr(err, "IOTFIN_RETRY_BASE_MS"));

  /* A base above the default maximum needs a maximum too. */
  nenv = 0;
  set("IOTFIN_RETRY_BASE_MS", "400000");
  assert_int_equal(load(), -1);
  assert_non_null(strstr(err, "IOTFIN_RETRY_MAX_MS"));
}

static void test_message_is_one_line(void **state) {
  (void)state;
  set("IOTFIN_MOCK", "maybe");
  assert_int_equal(load(), -1);
  assert_null(strchr(err, '\n'));
  assert_true(strlen(err) > strlen("IOTFIN_MOCK"));
  /* A small buffer is truncated, not overrun. */
  char small[8];
  memset(small, 'x', sizeof(small));
  assert_int_equal(config_load(&cfg, fake_getenv, small, sizeof(small)), -1);
  assert_int_equal(strlen(small), sizeof(small) - 1);
}

static void test_partner_names(void **state) {
  (void)state;
  assert_string_equal(config_partner_name(PARTNER_KYC), "kyc");
  assert_string_equal(config_partner_name(PARTNER_BANK), "bank");
  assert_string_equal(config_partner_env_name(PARTNER_IDENTITY), "IDENTITY");
  assert_string_equal(config_partner_env_name(PARTNER_SUPPLIER), "SUPPLIER");
  assert_int_equal(config_partner_by_name("supplier"), PARTNER_SUPPLIER);
  assert_int_equal(config_partner_by_name("identity"), PARTNER_IDENTITY);
  assert_int_equal(config_partner_by_name("KYC"), -1);
  assert_int_equal(config_partner_by_name("post"), -1);
  assert_int_equal(config_partner_by_name(""), -1);
}

#define T(f) cmocka_unit_test_setup(f, reset_env)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_defaults),
      T(test_partner_defaults_while_mock_on),
      T(test_no_dev_secrets_without_mock),
      T(test_explicit_values),
      T(test_ipv6_listen),
      T(test_bad_listen),
      T(test_bad_db),
      T(test_bad_broker),
      T(test_bad_mock),
      T(test_bad_other_strings),
      T(test_too_long_values),
      T(test_bad_numbers),
      T(test_number_bounds),
      T(test_retry_max_below_base),
      T(test_message_is_one_line),
      T(test_partner_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
