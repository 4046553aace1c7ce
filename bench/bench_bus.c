/* Bus benchmark: events published durably (each in its own store_write, from
 * several threads at once) and handled by a no-op function, end to end, beside the
 * raw rate of one-row SQLite commits with the same durability (WAL, FULL). Prints
 * one JSON object; bench/run.sh turns it into docs/BENCHMARKS.md. */
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "bus/bus.h"
#include "core/errors.h"
#include "core/log.h"
#include "services/events.h"

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t *lat_us;
static atomic_int handled;

static bus_outcome_t noop(app_t *app, const bus_msg_t *m) {
  json_t *d = m->data;
  int i = (int)json_integer_value(json_object_get(d, "i"));
  int64_t t0 = json_integer_value(json_object_get(d, "t0"));
  lat_us[i] = now_us() - t0;
  atomic_fetch_add(&handled, 1);
  return bus_done();
}

static const bus_queue_t bench_queues[] = {
    {.name = "bench", .subscribes = "device.imported", .handler = noop},
};

typedef struct {
  app_t *app;
  int from, to;
} pub_t;

typedef struct {
  int i;
} one_t;

static int publish_tx(store_tx_t *tx, void *arg) {
  one_t *o = arg;
  char id[32];
  snprintf(id, sizeof(id), "d%d", o->i);
  return events_record(tx, "device.imported", "devices/bench",
                       json_pack("{s:s,s:s,s:i,s:I}", "device_id", id, "serial", id, "i", o->i,
                                 "t0", (json_int_t)now_us()),
                       NULL);
}

static void *publisher(void *arg) {
  pub_t *p = arg;
  for (int i = p->from; i < p->to; i++) {
    one_t o = {i};
    if (store_write(p->app->store, publish_tx, &o) < 0) fprintf(stderr, "publish failed\n");
  }
  return NULL;
}

static int cmp64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static double raw_sqlite_commits(const char *path, int n) {
  sqlite3 *db;
  sqlite3_open(path, &db);
  sqlite3_exec(db,
               "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
               "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);",
               NULL, NULL, NULL);
  sqlite3_stmt *st;
  sqlite3_prepare_v2(db, "INSERT INTO t (v) VALUES ('x')", -1, &st, NULL);
  int64_t t0 = now_us();
  for (int i = 0; i < n; i++) {
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  }
  double secs = (double)(now_us() - t0) / 1e6;
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n / secs;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 20000;
  int threads = argc > 2 ? atoi(argv[2]) : 32;
  int workers = argc > 3 ? atoi(argv[3]) : 2;
  if (sodium_init() < 0) return 1;
  log_set_level(LOG_ERROR);
  char dir[] = "/tmp/iotfin-bench-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char url[300], raw[300];
  snprintf(url, sizeof(url), "sqlite:%s/bus.db", dir);
  /* IOTFIN_BENCH_DB=postgres://... runs the bus on PostgreSQL instead (an empty database). */
  if (getenv("IOTFIN_BENCH_DB")) snprintf(url, sizeof(url), "%s", getenv("IOTFIN_BENCH_DB"));
  snprintf(raw, sizeof(raw), "%s/raw.db", dir);

  double raw_rate = raw_sqlite_commits(raw, 2000);

  config_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.retry_base_ms = 100;
  cfg.retry_max_ms = 1000;
  cfg.max_receives = 10;
  cfg.visibility_timeout_ms = 30000;
  app_t app;
  memset(&app, 0, sizeof(app));
  app.cfg = &cfg;
  if (store_open(url, &app.store) < 0) return 1;
  bus_set_queues(bench_queues, 1);
  lat_us = calloc((size_t)n, sizeof(int64_t));
  bus_t *bus;
  bus_start(&app, workers, &bus);

  pthread_t t[256];
  pub_t p[256];
  if (threads > 256) threads = 256;
  int64_t t0 = now_us();
  for (int i = 0; i < threads; i++) {
    p[i] = (pub_t){&app, n * i / threads, n * (i + 1) / threads};
    pthread_create(&t[i], NULL, publisher, &p[i]);
  }
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  int64_t published = now_us();
  while (atomic_load(&handled) < n && now_us() - t0 < 120 * 1000000LL)
    usleep(1000);
  int64_t done = now_us();
  bus_stop(&bus, 1000);
  store_close(&app.store);

  qsort(lat_us, (size_t)n, sizeof(int64_t), cmp64);
  double secs = (double)(done - t0) / 1e6;
  printf("{\"events\":%d,\"handled\":%d,\"publishers\":%d,\"workers\":%d,"
         "\"publish_per_s\":%.0f,\"end_to_end_per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,"
         "\"raw_sqlite_commits_per_s\":%.0f}\n",
         n, atomic_load(&handled), threads, workers, n / ((double)(published - t0) / 1e6),
         atomic_load(&handled) / secs, lat_us[n / 2] / 1000.0, lat_us[n * 99 / 100] / 1000.0,
         raw_rate);
  char cmd[400];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  if (system(cmd) != 0) return 1;
  return 0;
}
