/* iotfin's own MQTT client (libmosquitto, MQTT 5), connected to the managed or an
 * external broker. It runs a network thread ("mqtt-loop") that reconnects by itself
 * within RECONNECT_MS of the broker taking connections again; the callbacks run on
 * that thread and must not block for long. */
#ifndef IOTFIN_HUB_MQTT_H
#define IOTFIN_HUB_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hub_mqtt hub_mqtt_t;

typedef struct {
  /* After every (re)connection, e.g. to subscribe and resend state. */
  void (*on_connect)(void *arg);
  /* arrived_ms: when the message reached the broker (unix ms), as well as the client
   * can tell: the broker plugin's "iotfin-received-ms" user property when present,
   * else when it was read, or the start of a stall of the process before that. */
  void (*on_message)(void *arg, const char *topic, const void *payload, size_t len,
                     int64_t arrived_ms);
  /* The broker answered the QoS 1 message with this mid: reason is the PUBACK's
   * reason code (0 accepted, 0x10 no matching subscribers, >= 0x80 refused). */
  void (*on_published)(void *arg, int mid, int reason);
  /* The connection was lost (not closed by us); a reconnect follows by itself. */
  void (*on_lost)(void *arg);
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
/* Drops the connection and makes a new one (within RECONNECT_MS): a fresh session,
 * without the subscriptions of the old one. Any thread. */
void hub_mqtt_reconnect(hub_mqtt_t *m);
/* Disconnects and stops the network thread; publishing afterwards fails harmlessly
 * (-ERR_UNAVAILABLE), so other threads may still hold m until hub_mqtt_stop. */
void hub_mqtt_halt(hub_mqtt_t *m);
/* Halts if not yet, and frees; sets *m to NULL. */
void hub_mqtt_stop(hub_mqtt_t **m);

#endif
