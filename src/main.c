/* iotfin's command line. `serve` starts the subsystems in dependency order (store,
 * keys, broker, MQTT client, HTTP gateway), prints the ready line, waits for
 * SIGTERM or SIGINT, and stops them in reverse order. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "api/api.h"
#include "app.h"
#include "bus/bus.h"
#include "cli/cli.h"
#include "core/config.h"
#include "core/errors.h"
#include "core/files.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "core/tls.h"
#include "http/server.h"
#include "hub/broker.h"
#include "hub/hub.h"
#include "hub/mqtt.h"
#include "partners/mock.h"
#include "services/catalogue.h"
#include "services/idempotency.h"
#include "services/retention.h"
#include "services/sessions.h"
#include "services/signing_keys.h"

static const char *usage_main =
    "iotfin " IOTFIN_VERSION " - event-driven backend for financial IoT devices\n"
    "\n"
    "Usage: iotfin <command> [options]\n"
    "\n"
    "Commands:\n"
    "  serve        run the HTTP API, event bus, MQTT bridge and mail in one process\n"
    "  demo         run the whole user journey against a running server\n"
    "  device       simulate a device over MQTT (acks commands, sends events, requests)\n"
    "  events-doc   print the event catalogue as Markdown\n"
    "  backup FILE  write the data dir (database snapshot, keys, admin token) to one file\n"
    "  restore FILE fill an empty data dir from such a file\n"
    "  migrate-store --to postgres://...\n"
    "               copy a SQLite data dir's store into PostgreSQL (docs/scaling.md)\n"
    "\n"
    "Options:\n"
    "  --help       show this help (also: iotfin <command> --help)\n"
    "  --version    print the version\n"
    "\n"
    "Settings come from IOTFIN_* environment variables; see `iotfin serve --help`.\n";

static const char *usage_serve =
    "Usage: iotfin serve\n"
    "\n"
    "Runs iotfin until SIGTERM or SIGINT. When everything is up it prints one line:\n"
    "  iotfin ready http=http://HOST:PORT mqtt=mqtt://HOST:PORT\n"
    "(https:// and mqtts:// when TLS is set up).\n"
    "Logs go to standard error, one JSON object per line.\n"
    "\n"
    "Settings (environment):\n"
    "  IOTFIN_LISTEN              HTTP address (127.0.0.1:8080; port 0 picks one)\n"
    "  IOTFIN_DATA_DIR            database, keys, broker config, mail (./iotfin-data)\n"
    "  IOTFIN_DB                  sqlite:<path> (default <data_dir>/iotfin.db) or\n"
    "                             postgres://USER:PASS@HOST:PORT/DB (docs/scaling.md)\n"
    "  IOTFIN_DB_WAIT_S           seconds to wait for PostgreSQL at start (30)\n"
    "  IOTFIN_BROKER_SPOOL        an external broker's spool directory, to store what it\n"
    "                             acknowledged (see docs/mqtt.md)\n"
    "  IOTFIN_BROKER              managed (default) or mqtt://[user:pass@]host:port\n"
    "  IOTFIN_MQTT_LISTEN         managed broker address (127.0.0.1:1883; port 0 picks one)\n"
    "  IOTFIN_ADMIN_TOKEN         admin bearer token (default: generated into\n"
    "                             <data_dir>/admin-token and printed at first start)\n"
    "  IOTFIN_SMTP_URL            smtp://host:port (default: .eml files in <data_dir>/mail)\n"
    "  IOTFIN_MAIL_FROM, IOTFIN_OPS_EMAIL\n"
    "  IOTFIN_MOCK                on (default) or off: the partner mock at /mock/\n"
    "  IOTFIN_MOCK_DIR            mock response files (./mocks, else the installed ones)\n"
    "  IOTFIN_PARTNER_<NAME>_URL|_SECRET|_PROXY|_TIMEOUT_MS   NAME: KYC IDENTITY SUPPLIER BANK\n"
    "  IOTFIN_RETRY_BASE_MS, IOTFIN_RETRY_MAX_MS, IOTFIN_MAX_RECEIVES,\n"
    "  IOTFIN_VISIBILITY_TIMEOUT_MS, IOTFIN_KYC_POLL_MS, IOTFIN_COMMAND_TTL_S,\n"
    "  IOTFIN_ACCESS_TTL_S, IOTFIN_DEVICE_TOKEN_TTL_S, IOTFIN_AUTH_RATE\n"
    "  IOTFIN_PASSWORD_HASH_MIB   memory of one Argon2id password hash (64; 19 to 4096)\n"
    "  IOTFIN_STREAMS_PER_USER (5), IOTFIN_STREAMS_MAX (2000): open event streams\n"
    "  IOTFIN_LOG_LEVEL           debug, info (default), warn or error\n"
    "  IOTFIN_TLS_CERT, IOTFIN_TLS_KEY            PEM files: serve the API over HTTPS\n"
    "  IOTFIN_MQTT_TLS_CERT, IOTFIN_MQTT_TLS_KEY  PEM files: the managed broker takes\n"
    "                             devices over TLS (mqtts://)\n"
    "  IOTFIN_RETENTION           keep finished records this long (90d; s, m, h, d)\n"
    "  IOTFIN_ACCESS_LOG          which requests get an access-log line: errors (default:\n"
    "                             4xx, 5xx and requests slower than 1 s), all, or sample:N\n"
    "                             (errors, slow ones and one success in N)\n"
    "\n"
    "A bad setting exits with status 2 and one line naming it.\n";

static const char *usage_events_doc =
    "Usage: iotfin events-doc\n\nPrints every event type iotfin emits, with its data fields,\n"
    "as Markdown (the source of docs/events.md).\n";

/* The data dir must take writes: database, keys and mail all live there. Finding
 * out by writing a file says why not (read-only, full, no permission) in one line,
 * before anything else fails less clearly. Root ignores permission bits, so
 * access(2) alone would not do. */
static int check_data_dir(const char *dir) {
  char path[1200];
  snprintf(path, sizeof(path), "%s/.write-check-%d", dir, (int)getpid());
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  int err = 0;
  if (fd < 0) {
    err = errno;
  } else {
    if (write(fd, "ok\n", 3) != 3 || fsync(fd) < 0) err = errno ? errno : EIO;
    close(fd);
    unlink(path);
  }
  if (!err) return 0;
  fprintf(stderr, "iotfin: invalid setting IOTFIN_DATA_DIR: %s is not writable: %s\n", dir,
          strerror(err));
  return -1;
}

/* Reads or creates <data_dir>/admin-token; prints a newly generated one. */
static int load_admin_token(app_t *app) {
  if (app->cfg->admin_token[0]) {
    snprintf(app->admin_token, sizeof(app->admin_token), "%s", app->cfg->admin_token);
    return 0;
  }
  char path[1200];
  snprintf(path, sizeof(path), "%s/admin-token", app->cfg->data_dir);
  FILE *f = fopen(path, "r");
  if (f) {
    bool ok = fgets(app->admin_token, sizeof(app->admin_token), f) != NULL;
    fclose(f);
    app->admin_token[strcspn(app->admin_token, "\r\n")] = 0;
    if (ok && strlen(app->admin_token) >= 16) return 0;
    log_error("main", "%s is empty or too short; delete it to generate a new one", path);
    return -1;
  }
  ids_random_token(app->admin_token, sizeof(app->admin_token), 32);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    log_error("main", "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  dprintf(fd, "%s\n", app->admin_token);
  fsync(fd);
  close(fd);
  printf("%s\n", app->admin_token);
  fflush(stdout);
  log_info("main", "generated the admin token into %s (printed once on standard output)", path);
  return 0;
}

/* Reads or creates <data_dir>/instance-id: the name this instance's queue leases
 * carry, the same across its restarts so that it takes back only its own. */
static int load_instance_id(app_t *app) {
  char path[1200];
  snprintf(path, sizeof(path), "%s/instance-id", app->cfg->data_dir);
  FILE *f = fopen(path, "r");
  if (f) {
    bool ok = fgets(app->instance_id, sizeof(app->instance_id), f) != NULL;
    fclose(f);
    app->instance_id[strcspn(app->instance_id, "\r\n")] = 0;
    if (ok && strlen(app->instance_id) >= 8) return 0;
  }
  ids_random_token(app->instance_id, sizeof(app->instance_id), 12);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || dprintf(fd, "%s\n", app->instance_id) < 0 || fsync(fd) < 0) {
    log_error("main", "cannot write %s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  close(fd);
  return 0;
}

/* External broker URL: mqtt://[user:pass@]host:port */
static void parse_broker_url(const char *url, char *user, char *pass, char *host, int *port) {
  const char *p = url + 7, *at = strrchr(p, '@');
  user[0] = pass[0] = 0;
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    size_t ul = colon ? (size_t)(colon - p) : (size_t)(at - p);
    snprintf(user, 128, "%.*s", (int)ul, p);
    if (colon) snprintf(pass, 256, "%.*s", (int)(at - colon - 1), colon + 1);
    p = at + 1;
  }
  const char *colon = strrchr(p, ':');
  snprintf(host, 256, "%.*s", (int)(colon - p), p);
  *port = atoi(colon + 1);
}

/* A certificate or key that cannot be used is a bad setting: said now, by name. */
static int check_tls(const config_t *cfg) {
  struct {
    const char *cert, *key, *cert_name, *key_name;
  } pairs[] = {
      {cfg->tls_cert, cfg->tls_key, "IOTFIN_TLS_CERT", "IOTFIN_TLS_KEY"},
      {cfg->mqtt_tls_cert, cfg->mqtt_tls_key, "IOTFIN_MQTT_TLS_CERT", "IOTFIN_MQTT_TLS_KEY"},
  };
  for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
    if (!pairs[i].cert[0]) continue;
    char why[512];
    int rc = tls_check_pair(pairs[i].cert, pairs[i].key, why, sizeof(why));
    if (rc < 0) {
      fprintf(stderr, "iotfin: invalid setting %s: %s\n",
              rc == -1 ? pairs[i].cert_name : pairs[i].key_name, why);
      return -1;
    }
  }
  return 0;
}

static int serve(void) {
  int64_t t0 = time_mono_ms();
  const char *lvl = getenv("IOTFIN_LOG_LEVEL");
  if (lvl) {
    if (strcmp(lvl, "debug") == 0)
      log_set_level(LOG_DEBUG);
    else if (strcmp(lvl, "warn") == 0)
      log_set_level(LOG_WARN);
    else if (strcmp(lvl, "error") == 0)
      log_set_level(LOG_ERROR);
    else if (strcmp(lvl, "info") != 0) {
      fprintf(stderr,
              "iotfin: invalid setting IOTFIN_LOG_LEVEL: expected debug, info, warn or error\n");
      return 2;
    }
  }
  static config_t cfg;
  if (config_load_or_say(&cfg, NULL) < 0) return 2;
  if (check_tls(&cfg) < 0) return 2;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  /* libsodium's userspace ChaCha20 generator, seeded from the kernel: request ids
   * and UUIDs then cost no getrandom(2) call each. */
  randombytes_set_implementation(&randombytes_internal_implementation);
  if (sodium_init() < 0) {
    fprintf(stderr, "iotfin: libsodium failed to initialise\n");
    return 1;
  }
  /* Signals are taken synchronously by the main thread; every thread inherits the mask. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  static app_t app;
  retention_t *retention = NULL;
  bool quiet = false;
  app.cfg = &cfg;
  app.started_ms = time_now_ms();
  int status = 1;
  /* Everything iotfin writes (database, keys, mail, spool) is for its own user only,
   * whatever umask it was started with. */
  umask(077);
  if (files_mkdir_p(cfg.data_dir) < 0) {
    fprintf(stderr, "iotfin: invalid setting IOTFIN_DATA_DIR: cannot create %s: %s\n", cfg.data_dir,
            strerror(errno));
    return 2;
  }
  if (check_data_dir(cfg.data_dir) < 0) return 2;
  char keydir[1200];
  snprintf(keydir, sizeof(keydir), "%s/keys", cfg.data_dir);
  if (load_admin_token(&app) < 0 || load_instance_id(&app) < 0 ||
      auth_keys_load(keydir, &app.keys) < 0)
    goto out;
  int src = store_open_wait(cfg.db_url, (int)cfg.db_wait_s, &app.store);
  if (src < 0) {
    /* A schema too new, or PostgreSQL out of reach: their one line says it all. */
    quiet = src == -ERR_CONFLICT || strncmp(cfg.db_url, "sqlite:", 7) != 0;
    goto out;
  }
  /* Keys and revocations are shared with any other instance on the database. */
  if (signing_keys_start(&app) < 0 || idem_release_own(&app) < 0) goto out;
  sessions_listen(app.store, true);

  char mqtt_host[256], user[128] = "", pass[256] = "";
  int mqtt_port;
  if (cfg.broker_managed) {
    char secret[64];
    ids_random_token(secret, sizeof(secret), 24);
    if (hub_broker_start(&app, secret, &app.broker) < 0) goto out;
    snprintf(mqtt_host, sizeof(mqtt_host), "%s", cfg.mqtt_host);
    mqtt_port = hub_broker_port(app.broker);
    snprintf(user, sizeof(user), "%s", HUB_INTERNAL_USER);
    snprintf(pass, sizeof(pass), "%s", secret);
  } else {
    parse_broker_url(cfg.broker_url, user, pass, mqtt_host, &mqtt_port);
  }
  if (cfg.broker_managed) hub_mqtt_use_tls(cfg.mqtt_tls_cert);
  if (hub_start(&app, mqtt_host, mqtt_port, user[0] ? user : NULL, pass[0] ? pass : NULL,
                cfg.broker_managed, &app.hub) < 0)
    goto out;
  bool mv6 = strchr(mqtt_host, ':') != NULL;
  snprintf(app.mqtt_url, sizeof(app.mqtt_url), "%s://%s%s%s:%d",
           cfg.mqtt_tls_cert[0] ? "mqtts" : "mqtt", mv6 ? "[" : "", mqtt_host, mv6 ? "]" : "",
           mqtt_port);

  if (cfg.tls_cert[0]) {
    app.tls_cert_pem = tls_read_pem(cfg.tls_cert);
    app.tls_key_pem = tls_read_pem(cfg.tls_key);
    if (!app.tls_cert_pem || !app.tls_key_pem) {
      log_error("main", "cannot read IOTFIN_TLS_CERT or IOTFIN_TLS_KEY");
      goto out;
    }
  }
  if (http_server_start(&app, api_routes, api_routes_count, cfg.listen_host, cfg.listen_port,
                        (http_server_t **)&app.http) < 0)
    goto out;
  bool v6 = strchr(cfg.listen_host, ':') != NULL; /* an IPv6 literal needs brackets in a URL */
  snprintf(app.http_url, sizeof(app.http_url), "%s://%s%s%s:%d", cfg.tls_cert[0] ? "https" : "http",
           v6 ? "[" : "", cfg.listen_host, v6 ? "]" : "",
           http_server_port((http_server_t *)app.http));
  if (cfg.mock && partner_mock_start(&app, &app.mock) < 0) goto out;
  if (cfg.mock) log_warn("main", "partner traffic is mocked; IOTFIN_MOCK=on is for development");
  /* Workers start last: their handlers may call the partner mock over HTTP. */
  if (bus_start(&app, 4, &app.bus) < 0) goto out;
  if (retention_start(&app, &retention) < 0) goto out;

  log_info("main", "ready in %lld ms (store %s, broker %s)", (long long)(time_mono_ms() - t0),
           store_backend(app.store), cfg.broker_managed ? "managed" : "external");
  printf("iotfin ready http=%s mqtt=%s\n", app.http_url, app.mqtt_url);
  fflush(stdout);

  int sig = 0;
  sigwait(&sigs, &sig);
  log_info("main", "received %s; finishing requests in flight (at most 10 s)",
           sig == SIGTERM ? "SIGTERM" : "SIGINT");
  status = 0;

out:
  api_stream_shutdown();
  http_server_stop((http_server_t **)&app.http, 10000);
  retention_stop(&retention);
  bus_stop(&app.bus, 10000);
  partner_mock_stop(&app.mock);
  hub_stop(&app.hub);
  hub_broker_stop(&app.broker);
  if (app.store) {
    sessions_listen(app.store, false);
    signing_keys_stop(&app);
  }
  store_close(&app.store);
  auth_keys_free(&app.keys);
  free(app.tls_cert_pem);
  if (app.tls_key_pem) sodium_memzero(app.tls_key_pem, strlen(app.tls_key_pem));
  free(app.tls_key_pem);
  if (status == 0)
    log_info("main", "stopped");
  else if (!quiet)
    log_error("main", "could not start; see the lines above");
  return status;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage_main, stderr);
    return 2;
  }
  const char *cmd = argv[1];
  bool help = argc > 2 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0);
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage_main, stdout);
    return 0;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    printf("iotfin %s\n", IOTFIN_VERSION);
    return 0;
  }
  if (strcmp(cmd, "serve") == 0) {
    if (help) {
      fputs(usage_serve, stdout);
      return 0;
    }
    if (argc > 2) {
      fprintf(stderr, "iotfin serve: unexpected argument %s (settings come from the environment)\n",
              argv[2]);
      return 2;
    }
    return serve();
  }
  if (strcmp(cmd, "device") == 0) return cli_device_main(argc - 1, argv + 1);
  if (strcmp(cmd, "demo") == 0) return cli_demo_main(argc - 1, argv + 1);
  if (strcmp(cmd, "backup") == 0) return cli_backup_main(argc - 1, argv + 1, false);
  if (strcmp(cmd, "restore") == 0) return cli_backup_main(argc - 1, argv + 1, true);
  if (strcmp(cmd, "migrate-store") == 0) return cli_migrate_store_main(argc - 1, argv + 1);
  if (strcmp(cmd, "events-doc") == 0) {
    if (help) {
      fputs(usage_events_doc, stdout);
      return 0;
    }
    catalogue_write_markdown(stdout);
    return 0;
  }
  fprintf(stderr, "iotfin: unknown command %s (see iotfin --help)\n", cmd);
  return 2;
}
