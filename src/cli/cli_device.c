/* `iotfin device`: a device simulator. It connects as one device (client id =
 * username = device id, password = device token), acknowledges every command as
 * succeeded, publishes the events and requests it was given, prints what happens
 * as one line each, and runs until SIGINT/SIGTERM or --duration. Tests, the demo
 * and the benchmarks drive devices with it. */
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/ids.h"
#include "core/timeutil.h"

static const char *usage =
    "Usage: iotfin device --id ID --password TOKEN [options]\n"
    "\n"
    "Connects as device ID (the token from POST /v1/devices/{id}/credentials),\n"
    "acknowledges every command as succeeded, and prints one line per message.\n"
    "\n"
    "Options:\n"
    "  --mqtt URL             broker (default mqtt://127.0.0.1:1883; mqtts:// for TLS)\n"
    "  --cafile FILE          CA certificate that mqtts:// trusts (default: the system's)\n"
    "  --event TYPE[=JSON]    publish an event of TYPE with data JSON (repeatable)\n"
    "  --request NAME[=JSON]  send request NAME with data JSON and print the answer\n"
    "                         (repeatable; e.g. --request ping, --request "
    "authorize={\"amount\":5})\n"
    "  --duration SECONDS     exit after this long (default: run until SIGINT/SIGTERM;\n"
    "                         with events or requests only: exit once all are answered)\n"
    "  --keepalive SECONDS    MQTT keepalive (default 30)\n"
    "  --help                 this text\n";

typedef struct {
  const char *id;
  atomic_int connected; /* 0 not yet, 1 yes, -1 refused */
  atomic_int subscribed;
  atomic_int pending_responses;
} dev_t_;

static atomic_bool stop;
static void on_signal(int sig) { atomic_store(&stop, true); }

static void on_connect(struct mosquitto *m, void *obj, int rc, int flags,
                       const mosquitto_property *p) {
  dev_t_ *d = obj;
  if (rc != 0) {
    printf("refused: %s\n", mosquitto_reason_string(rc));
    fflush(stdout);
    atomic_store(&d->connected, -1);
    return;
  }
  char topic[160];
  snprintf(topic, sizeof(topic), "devices/%s/commands", d->id);
  mosquitto_subscribe_v5(m, NULL, topic, 1, 0, NULL);
  snprintf(topic, sizeof(topic), "devices/%s/responses/+", d->id);
  mosquitto_subscribe_v5(m, NULL, topic, 1, 0, NULL);
  printf("connected as %s\n", d->id);
  fflush(stdout);
  atomic_store(&d->connected, 1);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *qos,
                         const mosquitto_property *p) {
  dev_t_ *d = obj;
  atomic_fetch_add(&d->subscribed, 1);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *p) {
  dev_t_ *d = obj;
  printf("received %s %.*s\n", msg->topic, msg->payloadlen, (const char *)msg->payload);
  fflush(stdout);
  char prefix[160];
  snprintf(prefix, sizeof(prefix), "devices/%s/commands", d->id);
  if (strcmp(msg->topic, prefix) == 0) {
    json_t *c = json_loadb(msg->payload, (size_t)msg->payloadlen, 0, NULL);
    const char *cid = json_string_value(json_object_get(c, "id"));
    if (cid) {
      char topic[256];
      snprintf(topic, sizeof(topic), "devices/%s/commands/%s/ack", d->id, cid);
      const char *ack = "{\"status\":\"succeeded\",\"result\":{\"by\":\"iotfin device\"}}";
      mosquitto_publish_v5(m, NULL, topic, (int)strlen(ack), ack, 1, false, NULL);
      printf("acked %s\n", cid);
      fflush(stdout);
    }
    json_decref(c);
  } else if (strstr(msg->topic, "/responses/")) {
    atomic_fetch_sub(&d->pending_responses, 1);
  }
}

/* Splits "NAME=JSON" into name and a JSON object (default {}). */
static json_t *split_arg(const char *arg, char *name, size_t cap) {
  const char *eq = strchr(arg, '=');
  size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
  if (nl >= cap) nl = cap - 1;
  memcpy(name, arg, nl);
  name[nl] = 0;
  if (!eq) return json_object();
  json_t *v = json_loads(eq + 1, 0, NULL);
  if (!json_is_object(v)) {
    json_decref(v);
    return NULL;
  }
  return v;
}

int cli_device_main(int argc, char **argv) {
  const char *id = NULL, *password = NULL, *url = "mqtt://127.0.0.1:1883";
  const char *events[64], *requests[64];
  int nevents = 0, nrequests = 0, keepalive = 30;
  double duration = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage, stdout);
      return 0;
    }
    if (!v) {
      fprintf(stderr, "iotfin device: %s needs a value (see --help)\n", a);
      return 2;
    }
    if (strcmp(a, "--id") == 0)
      id = v;
    else if (strcmp(a, "--password") == 0)
      password = v;
    else if (strcmp(a, "--mqtt") == 0)
      url = v;
    else if (strcmp(a, "--cafile") == 0)
      cli_set_cafile(v);
    else if (strcmp(a, "--event") == 0 && nevents < 64)
      events[nevents++] = v;
    else if (strcmp(a, "--request") == 0 && nrequests < 64)
      requests[nrequests++] = v;
    else if (strcmp(a, "--duration") == 0)
      duration = atof(v);
    else if (strcmp(a, "--keepalive") == 0)
      keepalive = atoi(v);
    else {
      fprintf(stderr, "iotfin device: unknown option %s (see --help)\n", a);
      return 2;
    }
    i++;
  }
  if (!id || !password) {
    fprintf(stderr, "iotfin device: --id and --password are required (see --help)\n");
    return 2;
  }
  char host[256];
  int port;
  bool tls;
  if (!cli_parse_mqtt_url(url, host, sizeof(host), &port, &tls)) {
    fprintf(stderr, "iotfin device: --mqtt must look like mqtt://host:port or mqtts://host:port\n");
    return 2;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  mosquitto_lib_init();
  dev_t_ d = {id, 0, 0, 0};
  struct mosquitto *m = mosquitto_new(id, true, &d);
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_username_pw_set(m, id, password);
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_connect_v5_callback_set(m, on_connect);
  mosquitto_subscribe_v5_callback_set(m, on_subscribe);
  mosquitto_message_v5_callback_set(m, on_message);
  int status = 0;
  if (tls && cli_mqtt_tls(m) < 0) {
    fprintf(stderr, "iotfin device: cannot use the CA file for %s\n", url);
    status = 2;
    goto out;
  }
  if (mosquitto_connect_bind_v5(m, host, port, keepalive, NULL, NULL) != MOSQ_ERR_SUCCESS) {
    fprintf(stderr, "iotfin device: cannot reach %s\n", url);
    status = 1;
    goto out;
  }
  mosquitto_loop_start(m);
  int64_t t0 = time_mono_ms();
  while (atomic_load(&d.connected) == 0 && time_mono_ms() - t0 < 5000)
    usleep(5000);
  if (atomic_load(&d.connected) != 1) {
    status = 1;
    goto stop;
  }
  while (atomic_load(&d.subscribed) < 2 && time_mono_ms() - t0 < 5000)
    usleep(5000);
  for (int i = 0; i < nevents; i++) {
    char type[128], eid[IDS_UUID_LEN], topic[160], ts[32];
    json_t *data = split_arg(events[i], type, sizeof(type));
    if (!data) {
      fprintf(stderr, "iotfin device: --event %s: the data must be a JSON object\n", events[i]);
      continue;
    }
    ids_uuid7(eid);
    time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
    json_t *ev = json_pack("{s:s,s:s,s:s,s:o}", "id", eid, "type", type, "time", ts, "data", data);
    char *s = json_dumps(ev, JSON_COMPACT);
    snprintf(topic, sizeof(topic), "devices/%s/events", id);
    mosquitto_publish_v5(m, NULL, topic, (int)strlen(s), s, 1, false, NULL);
    printf("published event %s %s\n", eid, s);
    fflush(stdout);
    free(s);
    json_decref(ev);
  }
  for (int i = 0; i < nrequests; i++) {
    char name[128], rid[IDS_UUID_LEN], topic[200];
    json_t *data = split_arg(requests[i], name, sizeof(name));
    if (!data) {
      fprintf(stderr, "iotfin device: --request %s: the data must be a JSON object\n", requests[i]);
      continue;
    }
    ids_uuid7(rid);
    json_t *rq = json_pack("{s:s,s:o}", "request_id", rid, "data", data);
    char *s = json_dumps(rq, JSON_COMPACT);
    snprintf(topic, sizeof(topic), "devices/%s/requests/%s", id, name);
    atomic_fetch_add(&d.pending_responses, 1);
    mosquitto_publish_v5(m, NULL, topic, (int)strlen(s), s, 1, false, NULL);
    printf("sent request %s %s\n", name, s);
    fflush(stdout);
    free(s);
    json_decref(rq);
  }
  bool finite = duration >= 0 || nevents + nrequests > 0;
  int64_t end = duration >= 0 ? time_mono_ms() + (int64_t)(duration * 1000) : INT64_MAX;
  while (!atomic_load(&stop) && time_mono_ms() < end) {
    if (duration < 0 && finite && atomic_load(&d.pending_responses) <= 0) {
      usleep(300 * 1000); /* let the last publishes leave */
      break;
    }
    usleep(20000);
  }
stop:
  mosquitto_disconnect_v5(m, 0, NULL);
  mosquitto_loop_stop(m, false);
out:
  mosquitto_destroy(m);
  mosquitto_lib_cleanup();
  return status;
}
