/* Command round trip with C clients on both ends (issue #14, "command round trip"): the
 * trip bench/device_bench.py also times with Python clients, whose own work (paho's
 * network thread, the GIL, http.client) is a large part of a trip of a few
 * milliseconds. The work asked of iotfin is the same: one keep-alive HTTP/1.1
 * connection POSTs a command, the device (libmosquitto, MQTT v5, its own network
 * thread) acks it at QoS 1 the moment it arrives, and the client polls GET
 * .../commands/{id} back to back until it reads "succeeded". Trips run one after
 * another; each leg is timed on one monotonic clock.
 *
 * Usage: bench_roundtrip HTTP_PORT MQTT_PORT TOKEN DEVICE_ID USERNAME PASSWORD
 *                        [WARMUP RUNS TRIPS]
 * Both servers on 127.0.0.1; the device's MQTT client id is DEVICE_ID. Prints one
 * JSON object: per run, p50/p90/p99/max of each leg in ms. Exits 1 with a line on
 * stderr if a trip fails. */
#include <arpa/inet.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { WAIT_S = 10, MAX_TRIPS = 100000 };

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void die(const char *what) {
  fprintf(stderr, "bench_roundtrip: %s\n", what);
  exit(1);
}

/* Copies the string value of the first "id" member of a JSON text into out. The
 * answers here are iotfin's own, so the first "id" is the command's. */
static bool json_id(const char *text, size_t len, char *out, size_t cap) {
  const char *end = text + len;
  for (const char *p = text; p + 6 < end; p++) {
    if (memcmp(p, "\"id\":\"", 6) != 0) continue;
    p += 6;
    size_t n = 0;
    while (p + n < end && p[n] != '"' && n + 1 < cap)
      n++;
    memcpy(out, p, n);
    out[n] = 0;
    return n > 0;
  }
  return false;
}

/* ---- the device ---------------------------------------------------------------- */

typedef struct {
  char id[128];
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool ready, refused;
  char last_cid[64]; /* the command that arrived last, and when */
  double last_at;
} device_t;

static void on_connect(struct mosquitto *m, void *arg, int rc, int flags,
                       const mosquitto_property *props) {
  (void)flags;
  (void)props;
  device_t *d = arg;
  if (rc != 0) {
    pthread_mutex_lock(&d->lock);
    d->refused = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    return;
  }
  char topic[256];
  snprintf(topic, sizeof(topic), "devices/%s/commands", d->id);
  mosquitto_subscribe_v5(m, NULL, topic, 1, 0, NULL);
}

static void on_subscribe(struct mosquitto *m, void *arg, int mid, int n, const int *qos,
                         const mosquitto_property *props) {
  (void)m;
  (void)mid;
  (void)props;
  device_t *d = arg;
  pthread_mutex_lock(&d->lock);
  if (n > 0 && qos[0] <= 1)
    d->ready = true;
  else
    d->refused = true;
  pthread_cond_broadcast(&d->cond);
  pthread_mutex_unlock(&d->lock);
}

/* Acks at once, as the Python device does, then says when the command arrived. */
static void on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg,
                       const mosquitto_property *props) {
  (void)props;
  double at = now_ms();
  device_t *d = arg;
  char cid[64], topic[256];
  if (!json_id(msg->payload, (size_t)msg->payloadlen, cid, sizeof(cid))) return;
  snprintf(topic, sizeof(topic), "devices/%s/commands/%s/ack", d->id, cid);
  static const char ack[] = "{\"status\":\"succeeded\"}";
  mosquitto_publish_v5(m, NULL, topic, (int)sizeof(ack) - 1, ack, 1, false, NULL);
  pthread_mutex_lock(&d->lock);
  snprintf(d->last_cid, sizeof(d->last_cid), "%s", cid);
  d->last_at = at;
  pthread_cond_broadcast(&d->cond);
  pthread_mutex_unlock(&d->lock);
}

/* Waits until command cid has reached the device; its arrival time, or -1. */
static double device_wait(device_t *d, const char *cid) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += WAIT_S;
  double at = -1;
  pthread_mutex_lock(&d->lock);
  while (strcmp(d->last_cid, cid) != 0)
    if (pthread_cond_timedwait(&d->cond, &d->lock, &dl) != 0) break;
  if (strcmp(d->last_cid, cid) == 0) at = d->last_at;
  pthread_mutex_unlock(&d->lock);
  return at;
}

/* ---- the API client: one keep-alive connection ---------------------------------- */

typedef struct {
  int fd;
  char buf[65536];
  size_t have; /* bytes in buf not yet consumed */
} http_t;

static void http_connect(http_t *h, int port) {
  h->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1;
  setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (h->fd < 0 || connect(h->fd, (struct sockaddr *)&a, sizeof(a)) != 0)
    die("cannot connect to the HTTP port");
  h->have = 0;
}

/* Sends one request and reads its answer; the status, with the body in body. */
static int http_call(http_t *h, const char *method, const char *path, const char *token,
                     const char *body, char *out, size_t cap) {
  char req[4096];
  size_t blen = body ? strlen(body) : 0;
  int n = snprintf(req, sizeof(req),
                   "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                   "%sContent-Length: %zu\r\n\r\n%s",
                   method, path, token, body ? "Content-Type: application/json\r\n" : "", blen,
                   body ? body : "");
  if (n < 0 || (size_t)n >= sizeof(req)) die("request too long");
  for (size_t sent = 0; sent < (size_t)n;) {
    ssize_t w = send(h->fd, req + sent, (size_t)n - sent, MSG_NOSIGNAL);
    if (w <= 0) die("the HTTP connection closed while sending");
    sent += (size_t)w;
  }
  char *head_end = NULL;
  for (;;) {
    h->buf[h->have] = 0;
    if ((head_end = strstr(h->buf, "\r\n\r\n"))) break;
    if (h->have + 1 >= sizeof(h->buf)) die("answer head too long");
    ssize_t r = recv(h->fd, h->buf + h->have, sizeof(h->buf) - 1 - h->have, 0);
    if (r <= 0) die("the HTTP connection closed while reading");
    h->have += (size_t)r;
  }
  int status = atoi(h->buf + 9);
  size_t head = (size_t)(head_end - h->buf) + 4, clen = 0;
  for (char *p = h->buf; p < head_end; p = strstr(p, "\r\n") + 2)
    if (strncasecmp(p, "content-length:", 15) == 0) clen = strtoul(p + 15, NULL, 10);
  if (head + clen >= sizeof(h->buf)) die("answer too long");
  while (h->have < head + clen) {
    ssize_t r = recv(h->fd, h->buf + h->have, sizeof(h->buf) - 1 - h->have, 0);
    if (r <= 0) die("the HTTP connection closed while reading");
    h->have += (size_t)r;
  }
  size_t keep = clen < cap ? clen : cap - 1;
  memcpy(out, h->buf + head, keep);
  out[keep] = 0;
  memmove(h->buf, h->buf + head + clen, h->have - head - clen);
  h->have -= head + clen;
  return status;
}

/* ---- the trips ------------------------------------------------------------------ */

enum { LEG_TRIP, LEG_TO_DEVICE, LEG_POST, LEG_TO_VISIBLE, LEGS };
static const char *leg_names[LEGS] = {"round_trip_ms", "api_to_device_ms", "post_ms",
                                      "device_to_visible_ms"};

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n), as bench/device_bench.py takes them. */
static double pct(const double *v, int n, double p) {
  int k = (int)(p / 100.0 * n + 0.999999) - 1;
  if (k < 0) k = 0;
  if (k >= n) k = n - 1;
  return v[k];
}

static int polls_total;

static void trip(http_t *h, device_t *d, const char *token, const char *dev, int i, double *legs) {
  char path[512], body[128], answer[8192], cid[64];
  snprintf(path, sizeof(path), "/v1/devices/%s/commands", dev);
  snprintf(body, sizeof(body), "{\"type\":\"bench.ping\",\"payload\":{\"i\":%d}}", i);
  double t0 = now_ms();
  int st = http_call(h, "POST", path, token, body, answer, sizeof(answer));
  double t_api = now_ms();
  if (st != 202 || !json_id(answer, strlen(answer), cid, sizeof(cid))) {
    fprintf(stderr, "bench_roundtrip: POST %s: %d %.200s\n", path, st, answer);
    exit(1);
  }
  double t_dev = device_wait(d, cid);
  if (t_dev < 0) {
    fprintf(stderr, "bench_roundtrip: command %s never reached the device\n", cid);
    exit(1);
  }
  snprintf(path, sizeof(path), "/v1/devices/%s/commands/%s", dev, cid);
  double deadline = now_ms() + WAIT_S * 1000.0;
  for (;;) {
    st = http_call(h, "GET", path, token, NULL, answer, sizeof(answer));
    polls_total++;
    if (st == 200 && strstr(answer, "\"status\":\"succeeded\"")) break;
    if (st != 200 || strstr(answer, "\"status\":\"failed\"") ||
        strstr(answer, "\"status\":\"expired\"") || now_ms() > deadline) {
      fprintf(stderr, "bench_roundtrip: command %s: %d %.200s\n", cid, st, answer);
      exit(1);
    }
  }
  double t_vis = now_ms();
  legs[LEG_TRIP] = t_vis - t0;
  legs[LEG_TO_DEVICE] = t_dev - t0;
  legs[LEG_POST] = t_api - t0;
  legs[LEG_TO_VISIBLE] = t_vis - t_dev;
}

int main(int argc, char **argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: bench_roundtrip HTTP_PORT MQTT_PORT TOKEN DEVICE_ID USERNAME "
                    "PASSWORD [WARMUP RUNS TRIPS]\n");
    return 2;
  }
  int http_port = atoi(argv[1]), mqtt_port = atoi(argv[2]);
  const char *token = argv[3], *dev = argv[4];
  int warmup = argc > 7 ? atoi(argv[7]) : 30, runs = argc > 8 ? atoi(argv[8]) : 3,
      trips = argc > 9 ? atoi(argv[9]) : 300;
  if (trips < 1 || trips > MAX_TRIPS || runs < 1 || warmup < 0) die("bad counts");

  static device_t d = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
  snprintf(d.id, sizeof(d.id), "%s", dev);
  mosquitto_lib_init();
  struct mosquitto *m = mosquitto_new(dev, true, &d);
  if (!m) die("mosquitto_new failed");
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_username_pw_set(m, argv[5], argv[6]);
  mosquitto_connect_v5_callback_set(m, on_connect);
  mosquitto_subscribe_v5_callback_set(m, on_subscribe);
  mosquitto_message_v5_callback_set(m, on_message);
  if (mosquitto_connect(m, "127.0.0.1", mqtt_port, 60) != MOSQ_ERR_SUCCESS)
    die("the device cannot connect");
  if (mosquitto_loop_start(m) != MOSQ_ERR_SUCCESS) die("mosquitto_loop_start failed");
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += WAIT_S;
  pthread_mutex_lock(&d.lock);
  while (!d.ready && !d.refused)
    if (pthread_cond_timedwait(&d.cond, &d.lock, &dl) != 0) break;
  bool ready = d.ready;
  pthread_mutex_unlock(&d.lock);
  if (!ready) die("the device was refused or did not subscribe");

  http_t *h = calloc(1, sizeof(*h));
  double *v[LEGS];
  for (int k = 0; k < LEGS; k++)
    v[k] = calloc((size_t)trips, sizeof(double));
  if (!h || !v[LEGS - 1]) die("out of memory");
  http_connect(h, http_port);
  double legs[LEGS];
  for (int i = 0; i < warmup; i++)
    trip(h, &d, token, dev, -i - 1, legs);

  printf("{\"clients\":\"C: libmosquitto device, raw HTTP/1.1 keep-alive, TCP_NODELAY\","
         "\"warmup\":%d,\"trips\":%d,\"runs\":[",
         warmup, trips);
  for (int r = 0; r < runs; r++) {
    polls_total = 0;
    for (int i = 0; i < trips; i++) {
      trip(h, &d, token, dev, i, legs);
      for (int k = 0; k < LEGS; k++)
        v[k][i] = legs[k];
    }
    printf("%s{\"run\":%d,\"n\":%d,\"get_polls_per_trip_mean\":%.2f", r ? "," : "", r + 1, trips,
           (double)polls_total / trips);
    for (int k = 0; k < LEGS; k++) {
      qsort(v[k], (size_t)trips, sizeof(double), cmp_double);
      printf(",\"%s\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}", leg_names[k],
             pct(v[k], trips, 50), pct(v[k], trips, 90), pct(v[k], trips, 99), v[k][trips - 1]);
    }
    printf("}");
    fflush(stdout);
  }
  printf("]}\n");
  close(h->fd);
  mosquitto_disconnect(m);
  mosquitto_loop_stop(m, false);
  mosquitto_destroy(m);
  mosquitto_lib_cleanup();
  for (int k = 0; k < LEGS; k++)
    free(v[k]);
  free(h);
  return 0;
}
