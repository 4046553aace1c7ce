/* The hub's broker connection. Connection state is an atomic flag written by
 * libmosquitto's thread and read by /readyz; losses and returns are logged. */
#include "hub/mqtt.h"

#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/timeutil.h"

struct hub_mqtt {
  struct mosquitto *mosq;
  atomic_bool connected;
  atomic_bool ever_connected;
  hub_mqtt_handlers_t h;
};

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static void lib_init(void) { mosquitto_lib_init(); }

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props) {
  hub_mqtt_t *m = obj;
  if (rc == 0) {
    atomic_store(&m->connected, true);
    if (atomic_exchange(&m->ever_connected, true))
      log_info("hub", "reconnected to the MQTT broker");
    if (m->h.on_connect) m->h.on_connect(m->h.arg);
  } else {
    log_error("hub", "MQTT broker refused iotfin's connection: %s", mosquitto_reason_string(rc));
  }
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                          const mosquitto_property *props) {
  hub_mqtt_t *m = obj;
  if (atomic_exchange(&m->connected, false) && rc != 0)
    log_warn("hub", "lost the MQTT broker connection (%s); reconnecting",
             mosquitto_reason_string(rc));
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props) {
  hub_mqtt_t *m = obj;
  if (m->h.on_message) m->h.on_message(m->h.arg, msg->topic, msg->payload, (size_t)msg->payloadlen);
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                       const mosquitto_property *props) {
  hub_mqtt_t *m = obj;
  if (m->h.on_published) m->h.on_published(m->h.arg, mid);
}

int hub_mqtt_publish(hub_mqtt_t *m, const char *topic, const void *payload, size_t len, int qos,
                     int *mid) {
  int rc = mosquitto_publish_v5(m->mosq, mid, topic, (int)len, payload, qos, false, NULL);
  return rc == MOSQ_ERR_SUCCESS ? 0 : -ERR_UNAVAILABLE;
}

int hub_mqtt_subscribe(hub_mqtt_t *m, const char *pattern, int qos) {
  int rc = mosquitto_subscribe_v5(m->mosq, NULL, pattern, qos, 0, NULL);
  return rc == MOSQ_ERR_SUCCESS ? 0 : -ERR_UNAVAILABLE;
}

/* Set once by main before any client starts; read-only afterwards. */
static char tls_cert[1024];

void hub_mqtt_use_tls(const char *cert_path) {
  snprintf(tls_cert, sizeof(tls_cert), "%s", cert_path ? cert_path : "");
}

int hub_mqtt_start(const char *host, int port, const char *username, const char *password,
                   int wait_ms, const hub_mqtt_handlers_t *handlers, hub_mqtt_t **out) {
  *out = NULL;
  pthread_once(&lib_once, lib_init);
  hub_mqtt_t *m = calloc(1, sizeof(*m));
  if (!m) return -ERR_INTERNAL;
  char client_id[64] = "iotfin-";
  ids_random_token(client_id + 7, sizeof(client_id) - 7, 9);
  if (handlers) m->h = *handlers;
  m->mosq = mosquitto_new(client_id, true, m);
  if (!m->mosq) {
    free(m);
    return -ERR_INTERNAL;
  }
  mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_connect_v5_callback_set(m->mosq, on_connect);
  mosquitto_disconnect_v5_callback_set(m->mosq, on_disconnect);
  mosquitto_message_v5_callback_set(m->mosq, on_message);
  mosquitto_publish_v5_callback_set(m->mosq, on_publish);
  /* Many commands may be in flight to the broker at once. */
  mosquitto_int_option(m->mosq, MOSQ_OPT_SEND_MAXIMUM, 1000);
  /* Small messages must leave at once: with Nagle each hop waited for a delayed ACK
   * (about 40 ms), which made a command round trip take 90 ms instead of 5. */
  mosquitto_int_option(m->mosq, MOSQ_OPT_TCP_NODELAY, 1);
  /* Let the broker send many QoS 1 messages before our acks: ingest is batched. */
  mosquitto_int_option(m->mosq, MOSQ_OPT_RECEIVE_MAXIMUM, 1000);
  mosquitto_reconnect_delay_set(m->mosq, 1, 5, true);
  if (username) mosquitto_username_pw_set(m->mosq, username, password);
  if (tls_cert[0]) {
    /* Our own broker, a child process on this machine: the channel is encrypted like
     * every other, and the peer is the process we started, so no name is checked. */
    mosquitto_tls_set(m->mosq, tls_cert, NULL, NULL, NULL, NULL);
    mosquitto_tls_opts_set(m->mosq, 0, NULL, NULL);
    mosquitto_tls_insecure_set(m->mosq, true);
  }
  int rc = mosquitto_connect_bind_v5(m->mosq, host, port, 30, NULL, NULL);
  if (rc != MOSQ_ERR_SUCCESS) {
    log_error("hub", "cannot connect to MQTT broker %s:%d: %s", host, port, mosquitto_strerror(rc));
    mosquitto_destroy(m->mosq);
    free(m);
    return -ERR_UNAVAILABLE;
  }
  /* Published before the network thread starts: callbacks may use it at once. */
  *out = m;
  mosquitto_loop_start(m->mosq);
  int64_t deadline = time_mono_ms() + wait_ms;
  while (!atomic_load(&m->connected) && time_mono_ms() < deadline)
    usleep(2000);
  if (!atomic_load(&m->connected)) {
    log_error("hub", "MQTT broker %s:%d did not accept iotfin within %d ms", host, port, wait_ms);
    hub_mqtt_stop(out);
    return -ERR_UNAVAILABLE;
  }
  return 0;
}

bool hub_mqtt_connected(const hub_mqtt_t *m) { return m && atomic_load(&m->connected); }

void hub_mqtt_stop(hub_mqtt_t **pm) {
  hub_mqtt_t *m = *pm;
  if (!m) return;
  mosquitto_disconnect_v5(m->mosq, 0, NULL);
  mosquitto_loop_stop(m->mosq, true);
  mosquitto_destroy(m->mosq);
  free(m);
  *pm = NULL;
}
