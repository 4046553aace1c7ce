/* Bus benchmark: events published durably (each in its own store_write, from
 * several threads at once) and handled by a no-op function, end to end, beside the
 * raw rate of one-row SQLite commits with the same durability (WAL, FULL). Prints
 * one JSON object; bench/run.sh turns it into docs/BENCHMARKS.md.
 *
 * IOTFIN_BENCH_DB=postgres://... runs the bus on PostgreSQL (an empty database; no
 * raw SQLite figure then). Several processes may share that database as instances
 * (bench/pg_bench.py): IOTFIN_BENCH_INSTANCES=K says how many publish n events each,
 * IOTFIN_BENCH_START_AT (Unix ms) when all start; each then runs until all K*n events
 * are handled, by whichever instance claimed them, and prints its wall-clock span. */
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

static int64_t now_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Latencies in the order handled: with several instances one may handle more events
 * than it published (CLOCK_MONOTONIC is one clock for every process on the machine). */
static int64_t *lat_us;
static int lat_cap;
static atomic_int handled;

static bus_outcome_t noop(app_t *app, const bus_msg_t *m) {
  json_t *d = m->data;
  int64_t t0 = json_integer_value(json_object_get(d, "t0"));
  int k = atomic_fetch_add(&handled, 1);
  if (k < lat_cap) lat_us[k] = now_us() - t0;
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
  char id[48];
  snprintf(id, sizeof(id), "d%d-%d", (int)getpid(), o->i);
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

/* Several instances: every event published (by all) and none left in the queue. */
typedef struct {
  int64_t want;
  int done;
} all_t;

static int all_handled_tx(store_tx_t *tx, void *arg) {
  all_t *a = arg;
  store_rows_t *r = NULL;
  int rc = store_exec(tx, &r,
                      "SELECT (SELECT COUNT(*) FROM events WHERE type = 'device.imported'),"
                      " (SELECT COUNT(*) FROM queue_messages WHERE queue = 'bench')",
                      "");
  if (rc >= 0 && r) a->done = store_rows_int(r, 0, 0) >= a->want && store_rows_int(r, 0, 1) == 0;
  store_rows_free(&r);
  return rc < 0 ? rc : 0;
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
  const char *db = getenv("IOTFIN_BENCH_DB");
  if (db) snprintf(url, sizeof(url), "%s", db);
  snprintf(raw, sizeof(raw), "%s/raw.db", dir);
  int instances = getenv("IOTFIN_BENCH_INSTANCES") ? atoi(getenv("IOTFIN_BENCH_INSTANCES")) : 1;
  if (instances < 1) instances = 1;
  int64_t start_at = getenv("IOTFIN_BENCH_START_AT") ? atoll(getenv("IOTFIN_BENCH_START_AT")) : 0;

  double raw_rate = db ? -1 : raw_sqlite_commits(raw, 2000);

  config_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.retry_base_ms = 100;
  cfg.retry_max_ms = 1000;
  cfg.max_receives = 10;
  cfg.visibility_timeout_ms = 30000;
  app_t app;
  memset(&app, 0, sizeof(app));
  app.cfg = &cfg;
  /* Leases name their instance; each process is one. */
  snprintf(app.instance_id, sizeof(app.instance_id), "bench-%d", (int)getpid());
  if (store_open(url, &app.store) < 0) return 1;
  bus_set_queues(bench_queues, 1);
  lat_cap = n * instances;
  lat_us = calloc((size_t)lat_cap, sizeof(int64_t));
  bus_t *bus;
  bus_start(&app, workers, &bus);
  while (now_wall_ms() < start_at)
    usleep(1000);
  int64_t wall0 = now_wall_ms();

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
  all_t all = {(int64_t)n * instances, 0};
  while (now_us() - t0 < 120 * 1000000LL) {
    if (instances == 1 ? atomic_load(&handled) >= n
                       : store_read(app.store, all_handled_tx, &all) >= 0 && all.done)
      break;
    usleep(instances == 1 ? 1000 : 5000);
  }
  int64_t done = now_us();
  int64_t wall1 = now_wall_ms();
  bus_stop(&bus, 1000);
  store_close(&app.store);

  int h = atomic_load(&handled);
  int m = h < lat_cap ? h : lat_cap;
  qsort(lat_us, (size_t)m, sizeof(int64_t), cmp64);
  double secs = (double)(done - t0) / 1e6;
  char rawtxt[32] = "null";
  if (raw_rate >= 0) snprintf(rawtxt, sizeof(rawtxt), "%.0f", raw_rate);
  printf("{\"events\":%d,\"handled\":%d,\"publishers\":%d,\"workers\":%d,\"instances\":%d,"
         "\"publish_per_s\":%.0f,\"end_to_end_per_s\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,"
         "\"wall_start_ms\":%lld,\"wall_done_ms\":%lld,\"raw_sqlite_commits_per_s\":%s}\n",
         n, h, threads, workers, instances, n / ((double)(published - t0) / 1e6),
         (instances == 1 ? h : n * instances) / secs, m ? lat_us[m / 2] / 1000.0 : 0,
         m ? lat_us[m * 99 / 100] / 1000.0 : 0, (long long)wall0, (long long)wall1, rawtxt);
  char cmd[400];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  if (system(cmd) != 0) return 1;
  return 0;
}
