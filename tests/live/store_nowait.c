/* What store_exec_nowait promises (store.h), checked on a live store: the SQLite file
 * or PostgreSQL database named by argv[1]. tests/e2e/test_12_store_live.py runs it on
 * both. Several callbacks are made to share one group commit (a first callback holds
 * the writer until the others wait behind it), and the second of them to run inserts
 * a key that exists. Its store_write must return -ERR_CONFLICT whatever it returned
 * itself; every callback that returns 0 must be committed and every other undone; on
 * PostgreSQL, where the failure is learnt late, the callbacks between it and the
 * point it was learnt are undone with -ERR_UNAVAILABLE, and those before it and after
 * that point are kept. Prints what differs and exits 1. */
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/errors.h"
#include "store/store.h"

#define MAX_JOBS 8

static int failures;
#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                         \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

static store_t *store;
static atomic_int position; /* callbacks run one after another on the writer: their order */
static bool read_first;     /* each callback reads (waits for an answer) before it writes */
static sem_t gate_entered, gate_open;

typedef struct {
  char key[48];
  int pos; /* 1-based, in the order the writer ran them */
  int rc;
} job_t;

static int insert_tx(store_tx_t *tx, void *arg) {
  return store_exec_nowait(tx, "INSERT INTO nowait_t (k) VALUES (?)", "s", (const char *)arg);
}

static int create_tx(store_tx_t *tx, void *arg) {
  (void)arg;
  return store_exec(tx, NULL, "CREATE TABLE nowait_t (k TEXT PRIMARY KEY)", "");
}

static int gate_tx(store_tx_t *tx, void *arg) {
  (void)tx;
  (void)arg;
  sem_post(&gate_entered);
  while (sem_wait(&gate_open) != 0) {
  }
  return 0;
}

static int job_tx(store_tx_t *tx, void *arg) {
  job_t *j = arg;
  j->pos = atomic_fetch_add(&position, 1) + 1;
  if (read_first) {
    store_rows_t *r = NULL;
    int rc = store_exec(tx, &r, "SELECT COUNT(*) FROM nowait_t", "");
    store_rows_free(&r);
    if (rc < 0) return rc;
  }
  /* The second to run collides with the key written at the start. */
  return store_exec_nowait(tx, "INSERT INTO nowait_t (k) VALUES (?)", "s",
                           j->pos == 2 ? "taken" : j->key);
}

static void *job_thread(void *arg) {
  job_t *j = arg;
  j->rc = store_write(store, job_tx, j);
  return NULL;
}

static void *gate_thread(void *arg) {
  (void)arg;
  store_write(store, gate_tx, NULL);
  return NULL;
}

typedef struct {
  const char *key;
  int found;
} count_t;

static int count_tx(store_tx_t *tx, void *arg) {
  count_t *c = arg;
  store_rows_t *r = NULL;
  int rc = store_exec(tx, &r, "SELECT COUNT(*) FROM nowait_t WHERE k = ?", "s", c->key);
  if (rc >= 0) c->found = (int)store_rows_int(r, 0, 0);
  store_rows_free(&r);
  return rc < 0 ? rc : 0;
}

static int found(const char *key) {
  count_t c = {key, -1};
  return store_read(store, count_tx, &c) < 0 ? -1 : c.found;
}

/* Runs n callbacks in one group commit; want[pos] is the return expected of the
 * callback that ran at pos (1-based), 0 meaning committed. */
static void scenario(const char *name, bool read, int n, const int *want) {
  read_first = read;
  atomic_store(&position, 0);
  pthread_t gate, th[MAX_JOBS];
  job_t jobs[MAX_JOBS];
  pthread_create(&gate, NULL, gate_thread, NULL);
  while (sem_wait(&gate_entered) != 0) {
  }
  for (int i = 0; i < n; i++) {
    snprintf(jobs[i].key, sizeof(jobs[i].key), "%s-%d", name, i);
    jobs[i].pos = 0;
    pthread_create(&th[i], NULL, job_thread, &jobs[i]);
  }
  /* Long enough for every thread to queue behind the gate: they then share a batch. */
  usleep(400 * 1000);
  sem_post(&gate_open);
  pthread_join(gate, NULL);
  for (int i = 0; i < n; i++)
    pthread_join(th[i], NULL);
  for (int i = 0; i < n; i++) {
    job_t *j = &jobs[i];
    CHECK(j->pos >= 1 && j->pos <= n, "%s: callback %d ran at %d", name, i, j->pos);
    if (j->pos < 1 || j->pos > n) continue;
    CHECK(j->rc == want[j->pos], "%s: the callback that ran at %d returned %d, want %d", name,
          j->pos, j->rc, want[j->pos]);
    int f = found(j->key);
    if (j->pos != 2)
      CHECK(f == (j->rc == 0), "%s: callback at %d returned %d but its row is %s", name, j->pos,
            j->rc, f == 1 ? "there" : "missing");
  }
  CHECK(found("taken") == 1, "%s: the taken key is there %d times", name, found("taken"));
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s STORE_URL\n", argv[0]);
    return 2;
  }
  if (store_open(argv[1], &store) != 0) {
    fprintf(stderr, "cannot open %s\n", argv[1]);
    return 2;
  }
  bool pg = strcmp(store_backend(store), "postgres") == 0;
  sem_init(&gate_entered, 0, 0);
  sem_init(&gate_open, 0, 0);
  /* The table, and the key the second callback collides with. Its first use prepares
   * the insert on the writer's connection, so later ones are sent without waiting. */
  int rc = store_write(store, create_tx, NULL);
  if (rc >= 0) rc = store_write(store, insert_tx, "taken");
  CHECK(rc == 0, "the first insert returned %d", rc);

  const int U = -ERR_UNAVAILABLE, C = -ERR_CONFLICT;
  /* Nothing waits for an answer after the collision: the batch's commit learns it. */
  int only_writes_pg[] = {0, 0, C, U}, only_writes_sqlite[] = {0, 0, C, 0};
  scenario("writes", false, 3, pg ? only_writes_pg : only_writes_sqlite);
  /* The third callback's read learns it: it is undone with the second, the fourth
   * runs after and is kept. */
  int reads_pg[] = {0, 0, C, U, 0}, reads_sqlite[] = {0, 0, C, 0, 0};
  scenario("reads", true, 4, pg ? reads_pg : reads_sqlite);

  store_close(&store);
  if (failures) return 1;
  printf("store_exec_nowait on %s: as promised\n", pg ? "postgres" : "sqlite");
  return 0;
}
