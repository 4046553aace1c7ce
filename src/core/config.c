/* Parses and validates the IOTFIN_* environment (CONTRACT section 1). A bad
 * value is reported by name at once, so a typo never becomes a silent default. */
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *partner_lower[] = {"kyc", "identity", "supplier", "bank"};
static const char *partner_upper[] = {"KYC", "IDENTITY", "SUPPLIER", "BANK"};

const char *config_partner_name(partner_id_t p) { return partner_lower[p]; }
const char *config_partner_env_name(partner_id_t p) { return partner_upper[p]; }

int config_partner_by_name(const char *name) {
  for (int i = 0; i < CONFIG_PARTNER_COUNT; i++)
    if (strcmp(name, partner_lower[i]) == 0) return i;
  return -1;
}

static int fail(char *err, size_t errlen, const char *name, const char *why) {
  snprintf(err, errlen, "invalid setting %s: %s", name, why);
  return -1;
}

static int copy_str(char *dst, size_t cap, const char *v, const char *name, char *err,
                    size_t errlen) {
  if (strlen(v) >= cap) return fail(err, errlen, name, "value too long");
  strcpy(dst, v);
  return 0;
}

/* host:port, with [v6]:port accepted; port 0..65535. */
static int parse_hostport(const char *v, char *host, size_t hostcap, int *port) {
  const char *colon = strrchr(v, ':');
  if (!colon || colon == v) return -1;
  size_t hl = (size_t)(colon - v);
  const char *h = v;
  if (h[0] == '[') {
    if (hl < 3 || h[hl - 1] != ']') return -1;
    h++;
    hl -= 2;
  }
  if (hl == 0 || hl >= hostcap) return -1;
  memcpy(host, h, hl);
  host[hl] = 0;
  char *end;
  errno = 0;
  long p = strtol(colon + 1, &end, 10);
  if (errno || *end || end == colon + 1 || p < 0 || p > 65535) return -1;
  *port = (int)p;
  return 0;
}

static int parse_long(const char *v, long min, long max, long *out) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno || *end || end == v || n < min || n > max) return -1;
  *out = n;
  return 0;
}

static bool is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ./mocks in a checkout; an installed binary (<prefix>/bin/iotfin, started from any
 * folder, / under systemd) has its shipped files in <prefix>/share/iotfin/mocks. */
static const char *default_mock_dir(char *buf, size_t cap) {
  if (is_dir("./mocks")) return "./mocks";
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "./mocks";
  self[n] = 0;
  char *slash = strrchr(self, '/');
  if (slash) *slash = 0;
  snprintf(buf, cap, "%s/../share/iotfin/mocks", self);
  return is_dir(buf) ? buf : "./mocks";
}

int config_load(config_t *cfg, config_getenv_fn get, char *err, size_t errlen) {
  memset(cfg, 0, sizeof(*cfg));
  const char *v;

  v = get("IOTFIN_LISTEN");
  if (!v) v = "127.0.0.1:8080";
  if (parse_hostport(v, cfg->listen_host, sizeof(cfg->listen_host), &cfg->listen_port))
    return fail(err, errlen, "IOTFIN_LISTEN", "expected HOST:PORT");

  v = get("IOTFIN_DATA_DIR");
  if (!v) v = "./iotfin-data";
  if (!*v) return fail(err, errlen, "IOTFIN_DATA_DIR", "must not be empty");
  if (copy_str(cfg->data_dir, sizeof(cfg->data_dir), v, "IOTFIN_DATA_DIR", err, errlen)) return -1;

  v = get("IOTFIN_DB");
  if (v) {
    if (strncmp(v, "sqlite:", 7) != 0 && strncmp(v, "postgres://", 11) != 0 &&
        strncmp(v, "postgresql://", 13) != 0)
      return fail(err, errlen, "IOTFIN_DB", "expected sqlite:<path> or postgres://...");
    if (strncmp(v, "sqlite:", 7) == 0 && !v[7])
      return fail(err, errlen, "IOTFIN_DB", "sqlite: needs a path");
    if (copy_str(cfg->db_url, sizeof(cfg->db_url), v, "IOTFIN_DB", err, errlen)) return -1;
  } else {
    snprintf(cfg->db_url, sizeof(cfg->db_url), "sqlite:%s/iotfin.db", cfg->data_dir);
  }

  /* How long a PostgreSQL server that does not answer yet is waited for at start. */
  v = get("IOTFIN_DB_WAIT_S");
  if (parse_long(v ? v : "30", 0, 3600, &cfg->db_wait_s))
    return fail(err, errlen, "IOTFIN_DB_WAIT_S", "expected seconds from 0 to 3600");

  /* Argon2id with 2 passes: 64 MiB is libsodium's "interactive" cost; 19 MiB is the
   * floor OWASP gives for 2 passes, so nothing weaker can be asked for. */
  v = get("IOTFIN_PASSWORD_HASH_MIB");
  if (parse_long(v ? v : "64", 19, 4096, &cfg->password_hash_mib))
    return fail(err, errlen, "IOTFIN_PASSWORD_HASH_MIB", "expected MiB from 19 to 4096");

  v = get("IOTFIN_BROKER");
  if (!v || strcmp(v, "managed") == 0) {
    cfg->broker_managed = true;
  } else {
    if (strncmp(v, "mqtt://", 7) != 0)
      return fail(err, errlen, "IOTFIN_BROKER", "expected managed or mqtt://host:port");
    char host[256];
    int port;
    const char *hp = strrchr(v + 7, '@');
    hp = hp ? hp + 1 : v + 7;
    if (parse_hostport(hp, host, sizeof(host), &port) || port == 0)
      return fail(err, errlen, "IOTFIN_BROKER", "expected managed or mqtt://host:port");
    if (copy_str(cfg->broker_url, sizeof(cfg->broker_url), v, "IOTFIN_BROKER", err, errlen))
      return -1;
  }

  v = get("IOTFIN_MQTT_LISTEN");
  if (!v) v = "127.0.0.1:1883";
  if (parse_hostport(v, cfg->mqtt_host, sizeof(cfg->mqtt_host), &cfg->mqtt_port))
    return fail(err, errlen, "IOTFIN_MQTT_LISTEN", "expected HOST:PORT");

  v = get("IOTFIN_ADMIN_TOKEN");
  if (v) {
    if (strlen(v) < 16) return fail(err, errlen, "IOTFIN_ADMIN_TOKEN", "at least 16 characters");
    if (copy_str(cfg->admin_token, sizeof(cfg->admin_token), v, "IOTFIN_ADMIN_TOKEN", err, errlen))
      return -1;
  }

  v = get("IOTFIN_SMTP_URL");
  if (v && *v) {
    if (strncmp(v, "smtp://", 7) != 0 && strncmp(v, "smtps://", 8) != 0)
      return fail(err, errlen, "IOTFIN_SMTP_URL", "expected smtp://host:port");
    if (copy_str(cfg->smtp_url, sizeof(cfg->smtp_url), v, "IOTFIN_SMTP_URL", err, errlen))
      return -1;
  }

  v = get("IOTFIN_MAIL_FROM");
  if (!v) v = "iotfin@localhost";
  if (!strchr(v, '@')) return fail(err, errlen, "IOTFIN_MAIL_FROM", "expected an address");
  if (copy_str(cfg->mail_from, sizeof(cfg->mail_from), v, "IOTFIN_MAIL_FROM", err, errlen))
    return -1;

  v = get("IOTFIN_OPS_EMAIL");
  if (!v) v = "ops@localhost";
  if (!strchr(v, '@')) return fail(err, errlen, "IOTFIN_OPS_EMAIL", "expected an address");
  if (copy_str(cfg->ops_email, sizeof(cfg->ops_email), v, "IOTFIN_OPS_EMAIL", err, errlen))
    return -1;

  v = get("IOTFIN_MOCK");
  if (!v || strcmp(v, "on") == 0)
    cfg->mock = true;
  else if (strcmp(v, "off") == 0)
    cfg->mock = false;
  else
    return fail(err, errlen, "IOTFIN_MOCK", "expected on or off");

  v = get("IOTFIN_MOCK_DIR");
  char installed_mocks[PATH_MAX];
  if (!v) v = default_mock_dir(installed_mocks, sizeof(installed_mocks));
  if (copy_str(cfg->mock_dir, sizeof(cfg->mock_dir), v, "IOTFIN_MOCK_DIR", err, errlen)) return -1;

  for (int i = 0; i < CONFIG_PARTNER_COUNT; i++) {
    char name[64];
    config_partner_t *p = &cfg->partners[i];
    snprintf(name, sizeof(name), "IOTFIN_PARTNER_%s_URL", partner_upper[i]);
    v = get(name);
    if (v) {
      if (strncmp(v, "http://", 7) != 0 && strncmp(v, "https://", 8) != 0)
        return fail(err, errlen, name, "expected an http:// or https:// URL");
      if (copy_str(p->url, sizeof(p->url), v, name, err, errlen)) return -1;
    } else if (!cfg->mock) {
      /* Without the mock there is nobody to answer: calls will fail as transient. */
      p->url[0] = 0;
    }
    snprintf(name, sizeof(name), "IOTFIN_PARTNER_%s_SECRET", partner_upper[i]);
    v = get(name);
    if (v) {
      if (!*v) return fail(err, errlen, name, "must not be empty");
      if (copy_str(p->secret, sizeof(p->secret), v, name, err, errlen)) return -1;
    } else if (cfg->mock) {
      snprintf(p->secret, sizeof(p->secret), "dev-secret-%s", partner_lower[i]);
    }
    snprintf(name, sizeof(name), "IOTFIN_PARTNER_%s_PROXY", partner_upper[i]);
    v = get(name);
    if (v && *v && copy_str(p->proxy, sizeof(p->proxy), v, name, err, errlen)) return -1;
    snprintf(name, sizeof(name), "IOTFIN_PARTNER_%s_TIMEOUT_MS", partner_upper[i]);
    v = get(name);
    p->timeout_ms = 5000;
    if (v && parse_long(v, 1, 600000, &p->timeout_ms))
      return fail(err, errlen, name, "expected milliseconds, 1..600000");
  }

  struct {
    const char *name;
    long *dst, def, min, max;
  } nums[] = {
      {"IOTFIN_RETRY_BASE_MS", &cfg->retry_base_ms, 1000, 1, 3600000},
      {"IOTFIN_RETRY_MAX_MS", &cfg->retry_max_ms, 300000, 1, 86400000},
      {"IOTFIN_MAX_RECEIVES", &cfg->max_receives, 10, 1, 1000},
      {"IOTFIN_VISIBILITY_TIMEOUT_MS", &cfg->visibility_timeout_ms, 30000, 100, 43200000},
      {"IOTFIN_KYC_POLL_MS", &cfg->kyc_poll_ms, 60000, 10, 86400000},
      {"IOTFIN_COMMAND_TTL_S", &cfg->command_ttl_s, 300, 1, 86400},
      {"IOTFIN_ACCESS_TTL_S", &cfg->access_ttl_s, 900, 1, 86400},
      {"IOTFIN_DEVICE_TOKEN_TTL_S", &cfg->device_token_ttl_s, 86400, 1, 31536000},
      {"IOTFIN_AUTH_RATE", &cfg->auth_rate, 60, 1, 1000000},
      {"IOTFIN_STREAMS_PER_USER", &cfg->streams_per_user, 5, 1, 1000},
      {"IOTFIN_STREAMS_MAX", &cfg->streams_max, 2000, 1, 100000},
  };
  for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
    v = get(nums[i].name);
    *nums[i].dst = nums[i].def;
    if (v && parse_long(v, nums[i].min, nums[i].max, nums[i].dst)) {
      char why[96];
      snprintf(why, sizeof(why), "expected an integer %ld..%ld", nums[i].min, nums[i].max);
      return fail(err, errlen, nums[i].name, why);
    }
  }
  /* errors by default: /metrics already counts every request by route, status
   * and latency, so a line per success repeats it at disk speed (26k req/s wrote
   * 539 MB in a minute); the failures and slow calls are what one reads. */
  v = get("IOTFIN_ACCESS_LOG");
  cfg->access_log = CONFIG_ACCESS_LOG_ERRORS;
  if (!v || strcmp(v, "errors") == 0) {
    cfg->access_log = CONFIG_ACCESS_LOG_ERRORS;
  } else if (strcmp(v, "all") == 0) {
    cfg->access_log = CONFIG_ACCESS_LOG_ALL;
  } else if (strncmp(v, "sample:", 7) == 0 &&
             parse_long(v + 7, 1, 1000000000, &cfg->access_log_sample) == 0) {
    cfg->access_log = CONFIG_ACCESS_LOG_SAMPLE;
  } else {
    return fail(err, errlen, "IOTFIN_ACCESS_LOG", "expected all, errors or sample:N (N >= 1)");
  }

  if (cfg->retry_max_ms < cfg->retry_base_ms)
    return fail(err, errlen, "IOTFIN_RETRY_MAX_MS", "must be >= IOTFIN_RETRY_BASE_MS");

  struct {
    const char *cert_name, *key_name;
    char *cert, *key;
  } pairs[] = {
      {"IOTFIN_TLS_CERT", "IOTFIN_TLS_KEY", cfg->tls_cert, cfg->tls_key},
      {"IOTFIN_MQTT_TLS_CERT", "IOTFIN_MQTT_TLS_KEY", cfg->mqtt_tls_cert, cfg->mqtt_tls_key},
  };
  for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
    const char *c = get(pairs[i].cert_name), *k = get(pairs[i].key_name);
    if (c && !*c) c = NULL;
    if (k && !*k) k = NULL;
    if (c && !k) return fail(err, errlen, pairs[i].key_name, "needed with a certificate");
    if (k && !c) return fail(err, errlen, pairs[i].cert_name, "needed with a key");
    if (c && (copy_str(pairs[i].cert, 1024, c, pairs[i].cert_name, err, errlen) ||
              copy_str(pairs[i].key, 1024, k, pairs[i].key_name, err, errlen)))
      return -1;
  }
  if (cfg->mqtt_tls_cert[0] && !cfg->broker_managed)
    return fail(err, errlen, "IOTFIN_MQTT_TLS_CERT",
                "only for the managed broker (an external one has its own TLS settings)");

  v = get("IOTFIN_BROKER_SPOOL");
  if (v && *v) {
    if (cfg->broker_managed)
      return fail(err, errlen, "IOTFIN_BROKER_SPOOL",
                  "only with an external broker (the managed one keeps its spool in the data dir)");
    if (v[0] != '/') return fail(err, errlen, "IOTFIN_BROKER_SPOOL", "expected an absolute path");
    if (copy_str(cfg->broker_spool, sizeof(cfg->broker_spool), v, "IOTFIN_BROKER_SPOOL", err,
                 errlen))
      return -1;
  }

  v = get("IOTFIN_RETENTION");
  if (config_parse_duration(v ? v : "90d", &cfg->retention_s) < 0 || cfg->retention_s < 1)
    return fail(err, errlen, "IOTFIN_RETENTION",
                "expected a duration such as 90d, 12h, 30m or 45s (at least 1s)");
  return 0;
}

static const char *process_env(const char *name) { return getenv(name); }

int config_load_or_say(config_t *cfg, config_getenv_fn get) {
  char err[256];
  if (config_load(cfg, get ? get : process_env, err, sizeof(err)) == 0) return 0;
  fprintf(stderr, "iotfin: %s\n", err);
  return -1;
}

int config_parse_duration(const char *v, int64_t *seconds) {
  char *end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  if (errno || end == v || n < 0 || strlen(end) != 1) return -1;
  long long unit = *end == 's'   ? 1
                   : *end == 'm' ? 60
                   : *end == 'h' ? 3600
                   : *end == 'd' ? 86400
                                 : 0;
  if (!unit || n > 100LL * 365 * 86400 / unit) return -1;
  *seconds = n * unit;
  return 0;
}
