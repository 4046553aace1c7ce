/* The hub's broker connection. Connection state is an atomic flag written by the
 * network thread and read by /readyz; losses and returns are logged. The network
 * thread is our own ("mqtt-loop") rather than libmosquitto's, whose reconnect
 * delays are whole seconds: ours retries every RECONNECT_MS, so iotfin is back
 * within a fraction of a second of its broker. */
#include "hub/mqtt.h"

#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/timeutil.h"

#define RECONNECT_MS 50
#define LOOP_TIMEOUT_MS 100
/* A loop turn this much longer than its timeout means the process did not run
 * (stopped, swapped out): what arrived meanwhile may be old. */
#define STALL_MS 500

struct hub_mqtt {
  struct mosquitto *mosq;
  pthread_t thread;
  bool thread_started;
  atomic_bool connected;
  atomic_bool ever_connected;
  atomic_bool closing;
  /* Network thread only: when the thread last did something (unix ms: a loop turn
   * began or a message was handed on); after a stall, the earliest time the
   * messages that were waiting in the socket may have arrived (0: none owed) and
   * how many of their bytes are still to be read. */
  int64_t idle_since_ms;
  int64_t stalled_since_ms;
  long stall_bytes_left;
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
  bool was = atomic_exchange(&m->connected, false);
  if (!was || rc == 0 || atomic_load(&m->closing)) return;
  log_warn("hub", "lost the MQTT broker connection (%s); reconnecting",
           mosquitto_reason_string(rc));
  if (m->h.on_lost) m->h.on_lost(m->h.arg);
}

/* When the message reached the broker, as well as we know: the plugin's stamp
 * "iotfin-received-ms" (unix ms) if present, else now, unless the process just
 * stalled (SIGSTOP, swapped out): then every message that piled up in the socket
 * meanwhile gets the moment the stall began, as it may be that old. */
static int64_t arrival_ms(hub_mqtt_t *m, const struct mosquitto_message *msg,
                          const mosquitto_property *props) {
  /* The last stamp counts: the plugin appends its own after any a device sent. */
  int64_t stamped = 0;
  for (const mosquitto_property *p = props; p; p = mosquitto_property_next(p)) {
    char *name = NULL, *value = NULL;
    if (mosquitto_property_identifier(p) != MQTT_PROP_USER_PROPERTY ||
        !mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &name, &value, false))
      continue;
    if (strcmp(name, "iotfin-received-ms") == 0) stamped = strtoll(value, NULL, 10);
    free(name);
    free(value);
  }
  int64_t now = time_now_ms();
  /* Never later than now: a stamp from the future would lengthen the deadline. */
  if (stamped > 0) return stamped < now ? stamped : now;
  if (!m->stalled_since_ms && now - m->idle_since_ms > STALL_MS) {
    /* This message was read already; what is still in the socket piled up too. */
    int pending = 0, fd = mosquitto_socket(m->mosq);
    if (fd < 0 || ioctl(fd, FIONREAD, &pending) < 0) pending = 0;
    m->stalled_since_ms = m->idle_since_ms;
    m->stall_bytes_left = pending;
  } else if (m->stalled_since_ms) {
    /* Its size on the wire: payload, topic and the least a PUBLISH adds to them. */
    m->stall_bytes_left -= msg->payloadlen + (long)strlen(msg->topic) + 7;
  }
  if (!m->stalled_since_ms) return now;
  int64_t at = m->stalled_since_ms;
  if (m->stall_bytes_left <= 0) m->stalled_since_ms = 0;
  return at;
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props) {
  hub_mqtt_t *m = obj;
  int64_t at = arrival_ms(m, msg, props);
  if (m->h.on_message)
    m->h.on_message(m->h.arg, msg->topic, msg->payload, (size_t)msg->payloadlen, at);
  /* A handler that waited (a full lane) is not a stall of the process. */
  m->idle_since_ms = time_now_ms();
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                       const mosquitto_property *props) {
  hub_mqtt_t *m = obj;
  if (m->h.on_published) m->h.on_published(m->h.arg, mid, reason);
}

/* Sleeps ms in slices, returning early once the client is closing. */
static void nap(hub_mqtt_t *m, int ms) {
  for (int t = 0; t < ms && !atomic_load(&m->closing); t += 10)
    usleep(10 * 1000);
}

static void *loop_main(void *arg) {
  hub_mqtt_t *m = arg;
  pthread_setname_np(pthread_self(), "mqtt-loop");
  while (!atomic_load(&m->closing)) {
    m->idle_since_ms = time_now_ms();
    int rc = mosquitto_loop(m->mosq, LOOP_TIMEOUT_MS, 1);
    if (rc == MOSQ_ERR_SUCCESS || atomic_load(&m->closing)) continue;
    nap(m, RECONNECT_MS);
    if (!atomic_load(&m->closing)) mosquitto_reconnect(m->mosq);
  }
  return NULL;
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

void hub_mqtt_reconnect(hub_mqtt_t *m) {
  /* The loop sees the connection gone and reconnects as after any loss. */
  mosquitto_disconnect_v5(m->mosq, 0, NULL);
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
  /* Our thread runs the loop: publishes from other threads are queued for it. */
  mosquitto_threaded_set(m->mosq, true);
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
  m->idle_since_ms = time_now_ms();
  if (pthread_create(&m->thread, NULL, loop_main, m) != 0) {
    *out = NULL;
    mosquitto_destroy(m->mosq);
    free(m);
    return -ERR_INTERNAL;
  }
  m->thread_started = true;
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

void hub_mqtt_halt(hub_mqtt_t *m) {
  if (!m || atomic_load(&m->closing)) return;
  /* The loop thread writes our DISCONNECT; give it a moment before ending it. Once
   * written, libmosquitto calls on_disconnect (the socket itself stays open until
   * the loop ends, so it cannot tell: waiting on it cost every stop 100 ms). */
  mosquitto_disconnect_v5(m->mosq, 0, NULL);
  for (int i = 0; i < 50 && atomic_load(&m->connected) && mosquitto_socket(m->mosq) >= 0; i++)
    usleep(2000);
  atomic_store(&m->closing, true);
  if (m->thread_started) pthread_join(m->thread, NULL);
}

void hub_mqtt_stop(hub_mqtt_t **pm) {
  hub_mqtt_t *m = *pm;
  if (!m) return;
  hub_mqtt_halt(m);
  mosquitto_destroy(m->mosq);
  free(m);
  *pm = NULL;
}
