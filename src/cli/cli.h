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

/* One HTTP call with an optional bearer token and JSON body (borrowed). Returns
 * the status (0 when no answer came) and the parsed answer in *out (may be NULL). */
long cli_http(const char *method, const char *url, const char *token, json_t *body, json_t **out);

/* Splits mqtt://host:port; false when malformed. */
bool cli_parse_mqtt_url(const char *url, char *host, size_t cap, int *port);

#endif
