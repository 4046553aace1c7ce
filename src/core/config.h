/* Settings of one iotfin process, read once from the environment at start.
 * Every other module receives a const config_t * and never calls getenv, so the
 * whole configuration surface is this one struct and its parser. */
#ifndef IOTFIN_CORE_CONFIG_H
#define IOTFIN_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_PARTNER_COUNT 4

/* The partners of CONTRACT section 6, in this fixed order. */
typedef enum { PARTNER_KYC, PARTNER_IDENTITY, PARTNER_SUPPLIER, PARTNER_BANK } partner_id_t;

typedef struct {
  char url[512]; /* empty: the mock (when on) */
  char secret[256];
  char proxy[512]; /* empty: no proxy */
  long timeout_ms;
} config_partner_t;

/* IOTFIN_ACCESS_LOG: which requests get an access-log line. */
typedef enum {
  CONFIG_ACCESS_LOG_ERRORS, /* 4xx, 5xx and slow requests (the default) */
  CONFIG_ACCESS_LOG_ALL,
  CONFIG_ACCESS_LOG_SAMPLE /* errors, slow ones, and one success in access_log_sample */
} config_access_log_t;

typedef struct {
  char listen_host[256];
  int listen_port; /* 0: pick a free port */
  char data_dir[1024];
  char db_url[1200]; /* sqlite:<path> or postgres://... */
  long db_wait_s;    /* IOTFIN_DB_WAIT_S: start-up wait for PostgreSQL */
  bool broker_managed;
  char broker_url[512]; /* when not managed: mqtt://[user:pass@]host:port */
  char mqtt_host[256];
  int mqtt_port;         /* 0: pick a free port */
  char admin_token[256]; /* empty: generated into <data_dir>/admin-token */
  char smtp_url[512];    /* empty: write .eml files */
  char mail_from[256];
  char ops_email[256];
  bool mock;
  char mock_dir[1024];
  config_partner_t partners[CONFIG_PARTNER_COUNT];
  long retry_base_ms, retry_max_ms;
  long max_receives;
  long visibility_timeout_ms;
  long kyc_poll_ms;
  long command_ttl_s;
  long access_ttl_s, device_token_ttl_s;
  long auth_rate;
  /* Memory of one Argon2id password hash, in MiB (IOTFIN_PASSWORD_HASH_MIB). */
  long password_hash_mib;
  /* Open event streams (GET /v1/events/stream): per user, and in all. */
  long streams_per_user, streams_max;
  /* TLS: PEM files; empty: plain. Both of a pair or neither (checked here); that
   * they can be read and belong together is checked at start (core/tls.c). */
  char tls_cert[1024], tls_key[1024];
  char mqtt_tls_cert[1024], mqtt_tls_key[1024];
  /* An external broker's spool directory (plugin_opt_spool_dir), readable here: the
   * instance that takes in device messages stores what it holds. "" for none. */
  char broker_spool[1024];
  /* Finished records older than this are deleted in the background (IOTFIN_RETENTION). */
  int64_t retention_s;
  config_access_log_t access_log;
  long access_log_sample; /* N of sample:N */
} config_t;

/* Fills cfg from the environment (getter, so tests can pass their own). Returns 0,
 * or -1 with a one-line message naming the bad setting in err. */
typedef const char *(*config_getenv_fn)(const char *name);
int config_load(config_t *cfg, config_getenv_fn get, char *err, size_t errlen);
/* config_load for a command: get NULL reads the process environment; a bad setting
 * is printed as "iotfin: <message>" on standard error. Returns 0 or -1. */
int config_load_or_say(config_t *cfg, config_getenv_fn get);

/* Parses a duration "<n>s|m|h|d" (at most 100 years) into seconds; -1 when malformed. */
int config_parse_duration(const char *v, int64_t *seconds);

/* Lower-case partner name ("kyc", ...) and upper-case env name ("KYC", ...). */
const char *config_partner_name(partner_id_t p);
const char *config_partner_env_name(partner_id_t p);
/* Looks a partner up by its lower-case name; -1 when unknown. */
int config_partner_by_name(const char *name);

#endif
