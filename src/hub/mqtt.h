/* iotfin's own MQTT client (libmosquitto, MQTT 5), connected to the managed or an
 * external broker. It runs libmosquitto's network thread and reconnects by itself. */
#ifndef IOTFIN_HUB_MQTT_H
#define IOTFIN_HUB_MQTT_H

#include <stdbool.h>

typedef struct hub_mqtt hub_mqtt_t;

/* Connects to host:port as username/password (either may be NULL) and waits up
 * to wait_ms for the first CONNACK. Returns 0 and *out (free with hub_mqtt_stop),
 * or -ERR_UNAVAILABLE. */
int hub_mqtt_start(const char *host, int port, const char *username, const char *password,
                   int wait_ms, hub_mqtt_t **out);
/* True while the client holds an accepted connection. Any thread. */
bool hub_mqtt_connected(const hub_mqtt_t *m);
/* Disconnects, stops the network thread and frees; sets *m to NULL. */
void hub_mqtt_stop(hub_mqtt_t **m);

#endif
