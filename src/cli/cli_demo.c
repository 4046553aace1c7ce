/* `iotfin demo`: drives the journey of CONTRACT section 9 against a running
 * server and prints each step with its timing. It plays every part: the admin,
 * an app (HTTP and the event stream) and a device (MQTT). It exits 0 only if
 * every step worked. With the partner mock on, it also poisons one BANK
 * notification to show a dead letter, its alarm and the redrive that clears it. */
#include <curl/curl.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/ids.h"
#include "core/timeutil.h"

static const char *usage =
    "Usage: iotfin demo [--url http://HOST:PORT] [--admin-token TOKEN] [--cafile FILE]\n"
    "\n"
    "Runs the whole journey against a running iotfin and prints each step:\n"
    "import a serial, register a user (KYC approves through the partner mock),\n"
    "claim the device, connect it over MQTT, send a command and see it acked on\n"
    "the event stream, raise events (forwarded to BANK), ask `authorize`, and\n"
    "(mock on) poison a BANK notification, see the alarm, redrive it.\n"
    "\n"
    "Defaults come from IOTFIN_LISTEN and IOTFIN_DATA_DIR (the admin token is read\n"
    "from <data_dir>/admin-token) or IOTFIN_ADMIN_TOKEN. Exit status 0 means every\n"
    "step worked. --cafile: the CA certificate to trust for https:// and mqtts://\n"
    "(default: the system's).\n";

static char base[512], admin[300];
static int64_t t_start, t_step;
static int steps_ok, steps_failed;

static void step(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("[%6.2fs] ", (double)(time_mono_ms() - t_start) / 1000.0);
  vprintf(fmt, ap);
  printf(" ... ");
  fflush(stdout);
  va_end(ap);
  t_step = time_mono_ms();
}

static bool done(bool ok, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("%s (%lld ms)", ok ? "ok" : "FAILED", (long long)(time_mono_ms() - t_step));
  /* Details explain failures; a detail starting with '=' is shown on success too. */
  if (fmt && (!ok || fmt[0] == '=')) {
    if (fmt[0] == '=') fmt++;
    printf(": ");
    vprintf(fmt, ap);
  }
  printf("\n");
  fflush(stdout);
  va_end(ap);
  if (ok)
    steps_ok++;
  else
    steps_failed++;
  return ok;
}

static long call(const char *method, const char *path, const char *token, json_t *body,
                 json_t **out) {
  char url[1024];
  snprintf(url, sizeof(url), "%s%s", base, path);
  long st = cli_http(method, url, token, body, out);
  json_decref(body);
  return st;
}

static const char *str(json_t *o, const char *k) {
  return json_string_value(json_object_get(o, k));
}

/* Polls GET path until field equals want (or timeout_ms). */
static bool wait_field(const char *path, const char *token, const char *field, const char *want,
                       int timeout_ms, json_t **last) {
  int64_t end = time_mono_ms() + timeout_ms;
  for (;;) {
    json_t *o = NULL;
    call("GET", path, token, NULL, &o);
    const char *v = str(o, field);
    if (v && strcmp(v, want) == 0) {
      if (last)
        *last = o;
      else
        json_decref(o);
      return true;
    }
    if (time_mono_ms() > end) {
      if (last)
        *last = o;
      else
        json_decref(o);
      return false;
    }
    json_decref(o);
    usleep(100 * 1000);
  }
}

/* --- the app's event stream ---------------------------------------------------- */

typedef struct {
  char url[600], auth[4200];
  pthread_mutex_t lock;
  char seen[8192]; /* event types seen, space separated */
  atomic_bool stop, open;
} sse_t;

static size_t sse_write(char *p, size_t size, size_t n, void *arg) {
  sse_t *s = arg;
  atomic_store(&s->open, true);
  pthread_mutex_lock(&s->lock);
  for (char *line = p; line < p + size * n;) {
    char *nl = memchr(line, '\n', (size_t)(p + size * n - line));
    size_t len = nl ? (size_t)(nl - line) : (size_t)(p + size * n - line);
    if (len > 7 && strncmp(line, "event: ", 7) == 0 &&
        strlen(s->seen) + len < sizeof(s->seen) - 2) {
      strncat(s->seen, line + 7, len - 7);
      strcat(s->seen, " ");
    }
    line += len + 1;
  }
  pthread_mutex_unlock(&s->lock);
  return atomic_load(&s->stop) ? 0 : size * n;
}

static int sse_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
  sse_t *s = arg;
  return atomic_load(&s->stop) ? 1 : 0;
}

static void *sse_main(void *arg) {
  sse_t *s = arg;
  CURL *c = curl_easy_init();
  struct curl_slist *h = curl_slist_append(NULL, "Accept: text/event-stream");
  h = curl_slist_append(h, s->auth);
  curl_easy_setopt(c, CURLOPT_URL, s->url);
  cli_curl_tls(c);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sse_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, sse_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, s);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  curl_easy_perform(c);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return NULL;
}

static bool sse_saw(sse_t *s, const char *type, int timeout_ms) {
  char want[128];
  snprintf(want, sizeof(want), "%s ", type);
  int64_t end = time_mono_ms() + timeout_ms;
  for (;;) {
    pthread_mutex_lock(&s->lock);
    bool ok = strstr(s->seen, want) != NULL;
    pthread_mutex_unlock(&s->lock);
    if (ok || time_mono_ms() > end) return ok;
    usleep(20 * 1000);
  }
}

/* --- the device ------------------------------------------------------------------ */

typedef struct {
  char id[64];
  atomic_int ready, commands, responses;
  char last_response[2048];
  pthread_mutex_t lock;
} device_t;

static void dev_connect(struct mosquitto *m, void *obj, int rc, int f,
                        const mosquitto_property *p) {
  device_t *d = obj;
  if (rc != 0) {
    atomic_store(&d->ready, -1);
    return;
  }
  char t[160];
  snprintf(t, sizeof(t), "devices/%s/commands", d->id);
  mosquitto_subscribe_v5(m, NULL, t, 1, 0, NULL);
  snprintf(t, sizeof(t), "devices/%s/responses/+", d->id);
  mosquitto_subscribe_v5(m, NULL, t, 1, 0, NULL);
}

static void dev_subscribed(struct mosquitto *m, void *obj, int mid, int n, const int *q,
                           const mosquitto_property *p) {
  device_t *d = obj;
  atomic_fetch_add(&d->ready, 1);
}

static void dev_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                        const mosquitto_property *p) {
  device_t *d = obj;
  if (strstr(msg->topic, "/responses/")) {
    pthread_mutex_lock(&d->lock);
    snprintf(d->last_response, sizeof(d->last_response), "%.*s", msg->payloadlen,
             (const char *)msg->payload);
    pthread_mutex_unlock(&d->lock);
    atomic_fetch_add(&d->responses, 1);
    return;
  }
  json_t *c = json_loadb(msg->payload, (size_t)msg->payloadlen, 0, NULL);
  const char *cid = str(c, "id");
  if (cid) {
    char t[256];
    snprintf(t, sizeof(t), "devices/%s/commands/%s/ack", d->id, cid);
    const char *ack = "{\"status\":\"succeeded\",\"result\":{\"done_by\":\"iotfin demo\"}}";
    mosquitto_publish_v5(m, NULL, t, (int)strlen(ack), ack, 1, false, NULL);
    atomic_fetch_add(&d->commands, 1);
  }
  json_decref(c);
}

static void publish_event(struct mosquitto *m, device_t *d, const char *type, int amount) {
  char eid[IDS_UUID_LEN], t[160], payload[512];
  ids_uuid7(eid);
  snprintf(t, sizeof(t), "devices/%s/events", d->id);
  snprintf(payload, sizeof(payload), "{\"id\":\"%s\",\"type\":\"%s\",\"data\":{\"amount\":%d}}",
           eid, type, amount);
  mosquitto_publish_v5(m, NULL, t, (int)strlen(payload), payload, 1, false, NULL);
}

static int bank_notifications(void) {
  json_t *o = NULL;
  call("GET", "/mock/_control/requests?partner=bank", admin, NULL, &o);
  int n = 0;
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(o, "items"), i, e) {
    if (str(e, "path") && strcmp(str(e, "path"), "/notifications") == 0) n++;
  }
  json_decref(o);
  return n;
}

static const char *alarm_state(const char *name) {
  static char state[16];
  json_t *o = NULL;
  call("GET", "/v1/admin/alarms", admin, NULL, &o);
  snprintf(state, sizeof(state), "none");
  size_t i;
  json_t *a;
  json_array_foreach(json_object_get(o, "items"), i, a) {
    if (str(a, "name") && strcmp(str(a, "name"), name) == 0)
      snprintf(state, sizeof(state), "%s", str(a, "state"));
  }
  json_decref(o);
  return state;
}

static int queue_dead(const char *queue) {
  json_t *o = NULL;
  call("GET", "/v1/admin/queues", admin, NULL, &o);
  int dead = -1;
  size_t i;
  json_t *q;
  json_array_foreach(json_object_get(o, "items"), i, q) {
    if (str(q, "name") && strcmp(str(q, "name"), queue) == 0)
      dead = (int)json_integer_value(json_object_get(q, "dead"));
  }
  json_decref(o);
  return dead;
}

static bool wait_until(bool (*fn)(void *), void *arg, int timeout_ms) {
  int64_t end = time_mono_ms() + timeout_ms;
  while (!fn(arg)) {
    if (time_mono_ms() > end) return false;
    usleep(50 * 1000);
  }
  return true;
}

static bool ops_mailed(void *arg) {
  json_t *o = NULL;
  call("GET", "/v1/admin/events?type=mail.sent&limit=200", admin, NULL, &o);
  bool found = false;
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(o, "items"), i, e) {
    const char *tpl = str(json_object_get(e, "data"), "template");
    if (tpl && strcmp(tpl, "alarm_raised") == 0) found = true;
  }
  json_decref(o);
  return found;
}

static bool alarm_is(void *want) {
  return strcmp(alarm_state("dead-letters:bank-forwarder"), want) == 0;
}
static bool bank_at_least(void *n) { return bank_notifications() >= *(int *)n; }

static int run(void) {
  t_start = time_mono_ms();
  json_t *o = NULL;
  char serial[32], email[96], rnd[16];
  ids_random_token(rnd, sizeof(rnd), 6);
  for (char *c = rnd; *c; c++)
    if (*c == '_') *c = 'x';
  snprintf(serial, sizeof(serial), "DEMO-%s", rnd);
  snprintf(email, sizeof(email), "demo-%s@example.com", rnd);

  step("0. %s is ready", base);
  if (!done(call("GET", "/readyz", NULL, NULL, NULL) == 200, NULL)) return 1;

  step("1. admin imports supplier serial %s", serial);
  long st =
      call("POST", "/v1/admin/devices/import", admin,
           json_pack("{s:[{s:s,s:s}]}", "devices", "serial", serial, "model", "demo-pos"), &o);
  if (!done(st == 200 && json_integer_value(json_object_get(o, "imported")) == 1, "HTTP %ld", st))
    return 1;
  json_decref(o);

  step("2. app opens an anonymous session");
  st = call("POST", "/v1/sessions/anonymous", NULL, NULL, &o);
  char anon[2048];
  snprintf(anon, sizeof(anon), "%s", str(o, "access_token") ? str(o, "access_token") : "");
  json_decref(o);
  if (!done(st == 201 && anon[0], "HTTP %ld", st)) return 1;

  step("2. app registers %s", email);
  st = call("POST", "/v1/registrations", anon,
            json_pack("{s:s,s:s,s:s,s:s}", "type", "local", "email", email, "password",
                      "demo-password-123", "name", "Demo User"),
            &o);
  char regtok[2048], rid[64], path[512];
  snprintf(regtok, sizeof(regtok), "%s", str(o, "access_token") ? str(o, "access_token") : "");
  snprintf(rid, sizeof(rid), "%s", str(json_object_get(o, "registration"), "id") ?: "");
  json_decref(o);
  if (!done(st == 202 && rid[0], "HTTP %ld", st)) return 1;

  step("2. KYC approves (the mock calls back after about 2 s)");
  snprintf(path, sizeof(path), "/v1/registrations/%s", rid);
  if (!done(wait_field(path, regtok, "status", "approved", 30000, NULL), "still pending")) return 1;

  step("2. app trades the registration session for a user session");
  snprintf(path, sizeof(path), "/v1/registrations/%s/session", rid);
  st = call("POST", path, regtok, NULL, &o);
  char user[2048];
  snprintf(user, sizeof(user), "%s", str(o, "access_token") ? str(o, "access_token") : "");
  json_decref(o);
  if (!done(st == 201 && user[0], "HTTP %ld", st)) return 1;

  sse_t sse;
  memset(&sse, 0, sizeof(sse));
  pthread_mutex_init(&sse.lock, NULL);
  snprintf(sse.url, sizeof(sse.url), "%s/v1/events/stream", base);
  snprintf(sse.auth, sizeof(sse.auth), "Authorization: Bearer %s", user);
  pthread_t sse_thread;
  pthread_create(&sse_thread, NULL, sse_main, &sse);

  step("3. user claims the device by serial");
  st = call("POST", "/v1/devices", user, json_pack("{s:s}", "serial", serial), &o);
  char did[64];
  snprintf(did, sizeof(did), "%s", str(o, "id") ? str(o, "id") : "");
  json_decref(o);
  int rc = 1;
  struct mosquitto *m = NULL;
  device_t dev;
  memset(&dev, 0, sizeof(dev));
  pthread_mutex_init(&dev.lock, NULL);
  if (!done(st == 202 && did[0], "HTTP %ld", st)) goto out;

  step("3. the supplier links it and it becomes active");
  snprintf(path, sizeof(path), "/v1/devices/%s", did);
  json_t *devjson = NULL;
  bool active = wait_field(path, user, "status", "active", 15000, &devjson);
  if (!done(active, "=external_id %s", str(devjson, "external_id") ?: "-")) {
    json_decref(devjson);
    goto out;
  }
  json_decref(devjson);

  step("4. user gets device credentials");
  snprintf(path, sizeof(path), "/v1/devices/%s/credentials", did);
  st = call("POST", path, user, NULL, &o);
  char pass[2048], host[256];
  int port = 0;
  bool tls = false;
  snprintf(pass, sizeof(pass), "%s", str(o, "password") ?: "");
  bool url_ok = cli_parse_mqtt_url(str(o, "mqtt_url") ?: "", host, sizeof(host), &port, &tls);
  json_decref(o);
  if (!done(st == 201 && url_ok, "HTTP %ld", st)) goto out;

  step("4. the device connects over MQTT");
  snprintf(dev.id, sizeof(dev.id), "%s", did);
  mosquitto_lib_init();
  m = mosquitto_new(did, true, &dev);
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_username_pw_set(m, did, pass);
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_connect_v5_callback_set(m, dev_connect);
  mosquitto_subscribe_v5_callback_set(m, dev_subscribed);
  mosquitto_message_v5_callback_set(m, dev_message);
  if ((!tls || cli_mqtt_tls(m) == 0) &&
      mosquitto_connect_bind_v5(m, host, port, 30, NULL, NULL) == MOSQ_ERR_SUCCESS)
    mosquitto_loop_start(m);
  int64_t end = time_mono_ms() + 5000;
  while (atomic_load(&dev.ready) < 2 && atomic_load(&dev.ready) >= 0 && time_mono_ms() < end)
    usleep(10000);
  if (!done(atomic_load(&dev.ready) >= 2, "refused or timed out")) goto out;

  step("5. user sends a command; the device receives and acks it");
  snprintf(path, sizeof(path), "/v1/devices/%s/commands", did);
  st = call("POST", path, user,
            json_pack("{s:s,s:{s:s}}", "type", "display.message", "payload", "text", "hello"), &o);
  char cpath[600];
  snprintf(cpath, sizeof(cpath), "/v1/devices/%s/commands/%s", did, str(o, "id") ?: "-");
  json_decref(o);
  bool acked = st == 202 && wait_field(cpath, user, "status", "succeeded", 10000, NULL);
  if (!done(acked, "HTTP %ld", st)) goto out;

  step("5. the app saw queued, delivered and completed on the event stream");
  bool saw = sse_saw(&sse, "device.command.queued", 3000) &&
             sse_saw(&sse, "device.command.delivered", 3000) &&
             sse_saw(&sse, "device.command.completed", 3000);
  if (!done(saw, "=seen %s", sse.seen)) goto out;

  bool mock = call("GET", "/mock/_control/requests?partner=bank", admin, NULL, NULL) == 200;
  int before = mock ? bank_notifications() : 0;
  step("6. the device raises 3 events");
  for (int i = 1; i <= 3; i++)
    publish_event(m, &dev, "payment.completed", i * 10);
  snprintf(path, sizeof(path), "/v1/devices/%s/events", did);
  end = time_mono_ms() + 5000;
  size_t nev = 0;
  while (time_mono_ms() < end) {
    call("GET", path, user, NULL, &o);
    nev = json_array_size(json_object_get(o, "items"));
    json_decref(o);
    if (nev >= 3) break;
    usleep(50000);
  }
  if (!done(nev >= 3, "=%zu stored", nev)) goto out;

  if (mock) {
    step("6. BANK received the 3 events as CloudEvents");
    int want = before + 3;
    if (!done(wait_until(bank_at_least, &want, 10000), "%d notifications", bank_notifications()))
      goto out;
  }

  step("6. the device asks `authorize`; BANK answers");
  {
    char t[200], rq[256];
    snprintf(t, sizeof(t), "devices/%s/requests/authorize", did);
    snprintf(rq, sizeof(rq), "{\"request_id\":\"demo-1\",\"data\":{\"amount\":42}}");
    mosquitto_publish_v5(m, NULL, t, (int)strlen(rq), rq, 1, false, NULL);
    end = time_mono_ms() + 3500;
    while (atomic_load(&dev.responses) < 1 && time_mono_ms() < end)
      usleep(10000);
    pthread_mutex_lock(&dev.lock);
    bool ok = atomic_load(&dev.responses) >= 1 && strstr(dev.last_response, "\"status\":\"ok\"");
    done(ok, "=%s", dev.last_response);
    pthread_mutex_unlock(&dev.lock);
    if (!ok) goto out;
  }

  if (!mock) {
    printf("7. skipped: the partner mock is off, so BANK cannot be poisoned on purpose\n");
    rc = steps_failed ? 1 : 0;
    goto out;
  }
  step("7. BANK refuses one notification (400): it ends as a dead letter");
  int dead_before = queue_dead("bank-forwarder");
  call("PUT", "/mock/_control/responses", admin,
       json_pack("{s:s,s:s,s:s,s:i,s:{s:s},s:i}", "partner", "bank", "method", "POST", "path",
                 "/notifications", "status", 400, "body", "error", "poisoned by iotfin demo",
                 "times", 1),
       NULL);
  publish_event(m, &dev, "payment.poisoned", 1);
  end = time_mono_ms() + 10000;
  while (queue_dead("bank-forwarder") <= dead_before && time_mono_ms() < end)
    usleep(50000);
  if (!done(queue_dead("bank-forwarder") > dead_before, NULL)) goto out;

  step("7. the alarm dead-letters:bank-forwarder is raised and ops are mailed");
  bool raised = wait_until(alarm_is, "alarm", 5000) && wait_until(ops_mailed, NULL, 5000);
  if (!done(raised, "alarm %s", alarm_state("dead-letters:bank-forwarder"))) goto out;

  step("7. after the fix, redrive clears the dead letters and the alarm");
  call("DELETE", "/mock/_control/responses", admin, NULL, NULL);
  st = call("POST", "/v1/admin/queues/bank-forwarder/redrive", admin, json_object(), &o);
  json_decref(o);
  bool cleared = st == 200 && wait_until(alarm_is, "ok", 10000);
  if (!done(cleared && queue_dead("bank-forwarder") == 0, "HTTP %ld", st)) goto out;
  rc = steps_failed ? 1 : 0;

out:
  if (m) {
    mosquitto_disconnect_v5(m, 0, NULL);
    mosquitto_loop_stop(m, false);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
  }
  atomic_store(&sse.stop, true);
  pthread_join(sse_thread, NULL);
  printf("%d step(s) ok, %d failed, %.2f s\n", steps_ok, steps_failed,
         (double)(time_mono_ms() - t_start) / 1000.0);
  return rc;
}

int cli_demo_main(int argc, char **argv) {
  const char *url = NULL, *tok = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage, stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "iotfin demo: %s needs a value (see --help)\n", argv[i]);
      return 2;
    }
    if (strcmp(argv[i], "--url") == 0)
      url = argv[++i];
    else if (strcmp(argv[i], "--admin-token") == 0)
      tok = argv[++i];
    else if (strcmp(argv[i], "--cafile") == 0)
      cli_set_cafile(argv[++i]);
    else {
      fprintf(stderr, "iotfin demo: unknown option %s (see --help)\n", argv[i]);
      return 2;
    }
  }
  if (url) {
    snprintf(base, sizeof(base), "%s", url);
  } else {
    const char *listen = getenv("IOTFIN_LISTEN");
    snprintf(base, sizeof(base), "http://%s", listen ? listen : "127.0.0.1:8080");
  }
  size_t bl = strlen(base);
  if (bl && base[bl - 1] == '/') base[bl - 1] = 0;
  if (!tok) tok = getenv("IOTFIN_ADMIN_TOKEN");
  if (tok) {
    snprintf(admin, sizeof(admin), "%s", tok);
  } else {
    const char *dir = getenv("IOTFIN_DATA_DIR");
    char p[1100];
    snprintf(p, sizeof(p), "%s/admin-token", dir ? dir : "./iotfin-data");
    FILE *f = fopen(p, "r");
    if (!f || !fgets(admin, sizeof(admin), f)) {
      fprintf(stderr, "iotfin demo: no admin token (read %s, or pass --admin-token)\n", p);
      if (f) fclose(f);
      return 2;
    }
    fclose(f);
    admin[strcspn(admin, "\r\n")] = 0;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  int rc = run();
  curl_global_cleanup();
  return rc;
}
