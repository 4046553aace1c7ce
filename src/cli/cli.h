/* The client-side commands of the iotfin binary: `iotfin device` (a device
 * simulator) and `iotfin demo` (the whole journey against a running server), and
 * the small HTTP and MQTT helpers they share. */
#ifndef IOTFIN_CLI_CLI_H
#define IOTFIN_CLI_CLI_H

#include <jansson.h>
#include <stdbool.h>

/* `iotfin device ...` and `iotfin demo ...`; argv[0] is the command name. Return
 * the process exit status. */
int cli_device_main(int argc, char **argv);
int cli_demo_main(int argc, char **argv);
/* `iotfin backup FILE` (restoring false) and `iotfin restore FILE`. */
int cli_backup_main(int argc, char **argv, bool restoring);
/* `iotfin migrate-store --to URL`: copies a SQLite data dir's store into PostgreSQL. */
int cli_migrate_store_main(int argc, char **argv);

/* One HTTP call with an optional bearer token and JSON body (borrowed). Returns
 * the status (0 when no answer came) and the parsed answer in *out (may be NULL). */
long cli_http(const char *method, const char *url, const char *token, json_t *body, json_t **out);

/* Splits mqtt://host:port or mqtts://host:port (*tls set); false when malformed. */
bool cli_parse_mqtt_url(const char *url, char *host, size_t cap, int *port, bool *tls);

/* --cafile: the CA (or self-signed certificate) that HTTPS and MQTT over TLS trust;
 * NULL: the system's. Set once, before any connection. */
void cli_set_cafile(const char *path);
/* Applies the trust settings to a curl handle (void *: callers need not include curl). */
void cli_curl_tls(void *curl);
/* Makes a libmosquitto client connect over TLS, verifying the broker. 0 or -1. */
struct mosquitto;
int cli_mqtt_tls(struct mosquitto *m);

#endif
