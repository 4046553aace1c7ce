/* The managed broker: iotfin writes a Mosquitto config into <data_dir>/broker/,
 * starts `mosquitto` with our auth plugin, restarts it if it dies, and stops it
 * on exit. The broker itself ends within moments if iotfin dies (see the plugin). */
#ifndef IOTFIN_HUB_BROKER_H
#define IOTFIN_HUB_BROKER_H

#include <stdbool.h>

#include "app.h"

typedef struct hub_broker hub_broker_t;

/* Stores what the spool of an earlier broker holds, then starts mosquitto on
 * cfg->mqtt_host:cfg->mqtt_port (0 picks a free port) and waits until it accepts
 * connections. internal_password is the secret iotfin's own client uses as user
 * "iotfin". Needs app->cfg, app->keys and app->store. Returns 0 and *out, or
 * -ERR_UNAVAILABLE with a log line giving the broker's own reason. Main thread. */
int hub_broker_start(app_t *app, const char *internal_password, hub_broker_t **out);
/* The port the broker listens on. */
int hub_broker_port(const hub_broker_t *b);
/* True while the broker process runs. Any thread. */
bool hub_broker_alive(const hub_broker_t *b);
/* Stops the broker (SIGTERM, then SIGKILL after 3 s) and frees; sets *b to NULL. */
void hub_broker_stop(hub_broker_t **b);

/* The user name iotfin's own client presents to the managed broker. */
#define HUB_INTERNAL_USER "iotfin"

#endif
