/* Connected-fleet load generator (issue #14, "connected devices"): opens one MQTT v5
 * connection per device (libmosquitto, like a real device's client) from one thread,
 * every socket driven by one poll() loop through mosquitto_loop_read/write/misc, so
 * 10,000 devices cost one process and no thread each. Each device subscribes to its
 * devices/<id>/responses/+ and, on command, sends one `ping` request; the answers are
 * counted and timed. bench/device_bench.py (section "connected") drives it and reads
 * the server's memory between the phases.
 *
 * libmosquitto holds three descriptors per client (its socket and a socket pair), so
 * one process holds at most (hard open-file limit - 64) / 3 devices; the driver runs
 * several for more.
 *
 * Usage: bench_fleet HOST PORT CREDS_FILE [WINDOW]
 *   CREDS_FILE: one device a line, "<client_id> <username> <password>".
 *   WINDOW: at most this many CONNACKs, and later ping answers, outstanding (64).
 * Protocol on stdout/stdin, one JSON object a line each way:
 *   -> {"phase":"connected",...}   all devices connected and subscribed (or gave up)
 *   <- "ping"                      send one ping request per device
 *   -> {"phase":"answered",...}    counts and latencies of the answers
 *   <- "close"                     disconnect everyone and exit
 * The sockets keep being serviced (keepalive) while it waits on stdin. */
#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum { FLEET_CONNECT_TIMEOUT_S = 300, FLEET_ANSWER_TIMEOUT_S = 60, FLEET_KEEPALIVE_S = 60 };

typedef struct {
  struct mosquitto *m;
  char id[80], user[80], pass[1024];
  int connack;    /* -1 until CONNACK */
  int subscribed; /* SUBACK with a granted QoS */
  int dead;       /* connection lost or refused */
  int64_t sent_us;
  int answered; /* 1 ok, 2 error status */
} fleet_dev_t;

static fleet_dev_t *fleet_devs;
static int fleet_n;
static int fleet_closed, fleet_answered_ok, fleet_answered_err;
static double *fleet_lat_ms;
static int fleet_lat_n;

static int64_t fleet_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void fleet_on_connect(struct mosquitto *m, void *obj, int rc, int flags,
                             const mosquitto_property *props) {
  fleet_dev_t *d = obj;
  d->connack = rc;
  if (rc != 0) return;
  char topic[128];
  snprintf(topic, sizeof(topic), "devices/%s/responses/+", d->id);
  mosquitto_subscribe_v5(m, NULL, topic, 1, 0, NULL);
}

static void fleet_on_subscribe(struct mosquitto *m, void *obj, int mid, int qos_count,
                               const int *granted, const mosquitto_property *props) {
  fleet_dev_t *d = obj;
  if (qos_count > 0 && granted[0] <= 2) d->subscribed = 1;
}

static void fleet_on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                             const mosquitto_property *props) {
  fleet_dev_t *d = obj;
  if (d->answered || !d->sent_us) return;
  /* The answer's own status; any answer counts as answered, only "ok" as a good one. */
  const char *p = msg->payload;
  int ok = p && msg->payloadlen > 0 && memmem(p, (size_t)msg->payloadlen, "\"ok\"", 4) != NULL;
  d->answered = ok ? 1 : 2;
  if (ok)
    fleet_answered_ok++;
  else
    fleet_answered_err++;
  fleet_lat_ms[fleet_lat_n++] = (double)(fleet_now_us() - d->sent_us) / 1000.0;
}

static void fleet_kill(fleet_dev_t *d) {
  if (d->dead) return;
  d->dead = 1;
  fleet_closed++;
}

static int64_t fleet_last_misc;

/* One round of poll over every live socket and stdin; returns 1 if stdin is readable. */
static int fleet_service(struct pollfd *pfd, int timeout_ms) {
  int k = 0;
  for (int i = 0; i < fleet_n; i++) {
    fleet_dev_t *d = &fleet_devs[i];
    int fd = d->m && !d->dead ? mosquitto_socket(d->m) : -1;
    pfd[k].fd = fd;
    pfd[k].events = fd >= 0 ? (short)(POLLIN | (mosquitto_want_write(d->m) ? POLLOUT : 0)) : 0;
    pfd[k].revents = 0;
    k++;
  }
  pfd[k] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
  int r = poll(pfd, (nfds_t)k + 1, timeout_ms);
  if (r < 0 && errno != EINTR) {
    perror("poll");
    exit(1);
  }
  for (int i = 0; r > 0 && i < fleet_n; i++) {
    fleet_dev_t *d = &fleet_devs[i];
    if (pfd[i].fd < 0 || !pfd[i].revents) continue;
    if (pfd[i].revents & (POLLIN | POLLERR | POLLHUP)) {
      if (mosquitto_loop_read(d->m, 1) != MOSQ_ERR_SUCCESS) {
        fleet_kill(d);
        continue;
      }
    }
    if ((pfd[i].revents & POLLOUT) && mosquitto_loop_write(d->m, 1) != MOSQ_ERR_SUCCESS)
      fleet_kill(d);
  }
  int64_t now = fleet_now_us();
  if (now - fleet_last_misc > 1000000) {
    fleet_last_misc = now;
    for (int i = 0; i < fleet_n; i++)
      if (fleet_devs[i].m && !fleet_devs[i].dead) mosquitto_loop_misc(fleet_devs[i].m);
  }
  return r > 0 && (pfd[k].revents & (POLLIN | POLLHUP)) != 0;
}

/* Services the sockets until a line arrives on stdin; returns it (or "" at EOF). */
static const char *fleet_wait_line(struct pollfd *pfd) {
  static char line[64];
  for (;;) {
    if (fleet_service(pfd, 200)) {
      if (!fgets(line, sizeof(line), stdin)) return "";
      line[strcspn(line, "\r\n")] = 0;
      return line;
    }
  }
}

static int fleet_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double fleet_pct(double p) {
  if (!fleet_lat_n) return -1;
  int k = (int)((p * fleet_lat_n + 99) / 100) - 1; /* nearest rank */
  if (k < 0) k = 0;
  if (k >= fleet_lat_n) k = fleet_lat_n - 1;
  return fleet_lat_ms[k];
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s HOST PORT CREDS_FILE [WINDOW]\n", argv[0]);
    return 2;
  }
  const char *host = argv[1];
  int port = atoi(argv[2]);
  int window = argc > 4 ? atoi(argv[4]) : 64;
  if (window < 1) window = 1;
  FILE *cf = fopen(argv[3], "r");
  if (!cf) {
    perror(argv[3]);
    return 2;
  }
  int cap = 1024;
  fleet_devs = calloc((size_t)cap, sizeof(*fleet_devs));
  char line[1200];
  while (fleet_devs && fgets(line, sizeof(line), cf)) {
    if (fleet_n == cap) {
      cap *= 2;
      fleet_dev_t *nd = realloc(fleet_devs, (size_t)cap * sizeof(*fleet_devs));
      if (!nd) break;
      fleet_devs = nd;
    }
    fleet_dev_t *d = &fleet_devs[fleet_n];
    memset(d, 0, sizeof(*d));
    if (sscanf(line, "%79s %79s %1023s", d->id, d->user, d->pass) == 3) fleet_n++;
  }
  fclose(cf);
  fleet_lat_ms = calloc((size_t)fleet_n + 1, sizeof(double));
  struct pollfd *pfd = calloc((size_t)fleet_n + 1, sizeof(*pfd));
  if (!fleet_devs || !fleet_lat_ms || !pfd) {
    fprintf(stderr, "bench_fleet: out of memory\n");
    return 1;
  }
  /* libmosquitto opens a socket pair per client besides its socket: three descriptors a
   * device. Raise the soft limit, and the hard one if that is not enough (root can). */
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rlim_t need = 3 * (rlim_t)fleet_n + 64;
  if (rl.rlim_cur < need) {
    rl.rlim_cur = need;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) rl.rlim_max = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      getrlimit(RLIMIT_NOFILE, &rl);
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need) {
      fprintf(stderr, "bench_fleet: open-file limit %lu is below %lu\n", (unsigned long)rl.rlim_cur,
              (unsigned long)need);
      return 2;
    }
  }
  mosquitto_lib_init();

  /* Connect: at most `window` devices waiting for their CONNACK at a time, so the
   * broker's listen backlog never overflows and connect() never waits for a SYN retry. */
  int64_t t0 = fleet_now_us(), deadline = t0 + (int64_t)FLEET_CONNECT_TIMEOUT_S * 1000000;
  int next = 0, refused = 0, subscribed = 0, connect_errors = 0;
  for (;;) {
    int waiting = 0;
    refused = subscribed = 0;
    for (int i = 0; i < next; i++) {
      fleet_dev_t *d = &fleet_devs[i];
      if (d->subscribed) subscribed++;
      if (d->connack > 0) refused++;
      if (!d->dead && !d->subscribed && d->connack <= 0) waiting++;
    }
    if (next == fleet_n && waiting == 0) break;
    if (fleet_now_us() > deadline) break;
    while (next < fleet_n && waiting < window) {
      fleet_dev_t *d = &fleet_devs[next++];
      d->connack = -1;
      d->m = mosquitto_new(d->id, true, d);
      if (!d->m) {
        fleet_kill(d);
        connect_errors++;
        continue;
      }
      mosquitto_int_option(d->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
      mosquitto_username_pw_set(d->m, d->user, d->pass);
      mosquitto_connect_v5_callback_set(d->m, fleet_on_connect);
      mosquitto_subscribe_v5_callback_set(d->m, fleet_on_subscribe);
      mosquitto_message_v5_callback_set(d->m, fleet_on_message);
      int rc = mosquitto_connect(d->m, host, port, FLEET_KEEPALIVE_S);
      if (rc != MOSQ_ERR_SUCCESS) {
        /* The first few reasons, for the report (EMFILE, ECONNREFUSED, ...). */
        if (connect_errors < 3)
          fprintf(stderr, "bench_fleet: %s: connect: %s (%s)\n", d->id, mosquitto_strerror(rc),
                  rc == MOSQ_ERR_ERRNO ? strerror(errno) : "-");
        fleet_kill(d);
        connect_errors++;
        continue;
      }
      waiting++;
    }
    fleet_service(pfd, 10);
  }
  double connect_s = (double)(fleet_now_us() - t0) / 1e6;
  printf("{\"phase\":\"connected\",\"devices\":%d,\"subscribed\":%d,\"refused\":%d,"
         "\"connect_errors\":%d,\"closed\":%d,\"connect_s\":%.3f,\"window\":%d}\n",
         fleet_n, subscribed, refused, connect_errors, fleet_closed, connect_s, window);
  fflush(stdout);

  const char *cmd = fleet_wait_line(pfd);
  if (strcmp(cmd, "ping") == 0) {
    /* One ping per connected device, at most `window` unanswered at a time, so the
     * latency is that of a device's request, not of a 10,000-deep queue. */
    int sent = 0, send_errors = 0;
    t0 = fleet_now_us();
    int64_t last_progress = t0;
    next = 0;
    for (;;) {
      int done = fleet_answered_ok + fleet_answered_err;
      while (next < fleet_n && sent - done < window) {
        fleet_dev_t *d = &fleet_devs[next++];
        if (d->dead || !d->subscribed) continue;
        char topic[128], body[96];
        snprintf(topic, sizeof(topic), "devices/%s/requests/ping", d->id);
        int len = snprintf(body, sizeof(body), "{\"request_id\":\"p%d\",\"data\":{}}", next);
        d->sent_us = fleet_now_us();
        if (mosquitto_publish_v5(d->m, NULL, topic, len, body, 1, false, NULL) !=
            MOSQ_ERR_SUCCESS) {
          d->sent_us = 0;
          send_errors++;
          continue;
        }
        sent++;
      }
      if (next == fleet_n && done >= sent) break;
      fleet_service(pfd, 10);
      if (fleet_answered_ok + fleet_answered_err != done) last_progress = fleet_now_us();
      if (fleet_now_us() - last_progress > (int64_t)FLEET_ANSWER_TIMEOUT_S * 1000000) break;
    }
    double ping_s = (double)(fleet_now_us() - t0) / 1e6;
    qsort(fleet_lat_ms, (size_t)fleet_lat_n, sizeof(double), fleet_cmp);
    int still = 0;
    for (int i = 0; i < fleet_n; i++)
      still += fleet_devs[i].subscribed && !fleet_devs[i].dead;
    printf("{\"phase\":\"answered\",\"sent\":%d,\"send_errors\":%d,\"answered_ok\":%d,"
           "\"answered_error\":%d,\"still_connected\":%d,\"seconds\":%.3f,"
           "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"latencies_ms\":[",
           sent, send_errors, fleet_answered_ok, fleet_answered_err, still, ping_s, fleet_pct(50),
           fleet_pct(90), fleet_pct(99), fleet_lat_n ? fleet_lat_ms[fleet_lat_n - 1] : -1);
    /* Every latency too, so a driver running several of these can merge them. */
    for (int i = 0; i < fleet_lat_n; i++)
      printf("%s%.3f", i ? "," : "", fleet_lat_ms[i]);
    printf("]}\n");
    fflush(stdout);
    cmd = fleet_wait_line(pfd);
  }
  for (int i = 0; i < fleet_n; i++) {
    fleet_dev_t *d = &fleet_devs[i];
    if (!d->m) continue;
    if (!d->dead) mosquitto_disconnect_v5(d->m, 0, NULL);
    mosquitto_destroy(d->m);
  }
  mosquitto_lib_cleanup();
  printf("{\"phase\":\"closed\"}\n");
  free(pfd);
  free(fleet_lat_ms);
  free(fleet_devs);
  return 0;
}
