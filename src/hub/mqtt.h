/* iotfin's own MQTT client (libmosquitto, MQTT 5), connected to the managed or an
 * external broker. It runs libmosquitto's network thread ("mosquitto loop") and
 * reconnects by itself; the callbacks run on that thread and must not block. */
#ifndef IOTFIN_HUB_MQTT_H
#define IOTFIN_HUB_MQTT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct hub_mqtt hub_mqtt_t;

typedef struct {
  /* After every (re)connection, e.g. to subscribe and resend state. */
  void (*on_connect)(void *arg);
  void (*on_message)(void *arg, const char *topic, const void *payload, size_t len);
  /* The broker acknowledged the QoS 1 message with this mid. */
  void (*on_published)(void *arg, int mid);
  void *arg;
} hub_mqtt_handlers_t;

/* Connects to host:port as username/password (either may be NULL) and waits up
 * to wait_ms for the first CONNACK. handlers may be NULL. *out is set before the
 * network thread starts, so handlers may use it from their first call. Returns 0
 * (free with hub_mqtt_stop), or -ERR_UNAVAILABLE with *out NULL. */
/* Clients started from now on connect over TLS to the managed broker, whose certificate
 * is cert_path (NULL or "": plain). Main thread, before hub_start. */
void hub_mqtt_use_tls(const char *cert_path);
int hub_mqtt_start(const char *host, int port, const char *username, const char *password,
                   int wait_ms, const hub_mqtt_handlers_t *handlers, hub_mqtt_t **out);
/* True while the client holds an accepted connection. Any thread. */
bool hub_mqtt_connected(const hub_mqtt_t *m);
/* Publishes; writes the message id to *mid when non-NULL. 0 or -ERR_UNAVAILABLE. Any thread. */
int hub_mqtt_publish(hub_mqtt_t *m, const char *topic, const void *payload, size_t len, int qos,
                     int *mid);
int hub_mqtt_subscribe(hub_mqtt_t *m, const char *pattern, int qos);
/* Disconnects, stops the network thread and frees; sets *m to NULL. */
void hub_mqtt_stop(hub_mqtt_t **m);

#endif
