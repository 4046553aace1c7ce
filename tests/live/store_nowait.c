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

#define MAX_JOBS 200

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
static int clash_at;        /* the position of the callback that collides */
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
  /* The one at clash_at collides with the key written at the start. */
  return store_exec_nowait(tx, "INSERT INTO nowait_t (k) VALUES (?)", "s",
                           j->pos == clash_at ? "taken" : j->key);
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

/* Runs n callbacks in one group commit, the one at position clash (1-based) colliding;
 * want[pos] is the return expected of the callback that ran at pos, 0 meaning
 * committed. Without want: those before the clash are committed, and after it each
 * is committed or undone with -ERR_UNAVAILABLE, the undone ones first (up to the
 * point the writer learnt of the clash). */
static void scenario(const char *name, bool read, int n, int clash, const int *want) {
  read_first = read;
  clash_at = clash;
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
  int rc_at[MAX_JOBS + 1] = {0};
  for (int i = 0; i < n; i++) {
    job_t *j = &jobs[i];
    CHECK(j->pos >= 1 && j->pos <= n, "%s: callback %d ran at %d", name, i, j->pos);
    if (j->pos < 1 || j->pos > n) continue;
    rc_at[j->pos] = j->rc;
    int f = found(j->key);
    if (j->pos != clash)
      CHECK(f == (j->rc == 0), "%s: callback at %d returned %d but its row is %s", name, j->pos,
            j->rc, f == 1 ? "there" : "missing");
  }
  for (int pos = 1; pos <= n; pos++) {
    int want_rc = want ? want[pos] : pos < clash ? 0 : pos == clash ? -ERR_CONFLICT : rc_at[pos];
    CHECK(rc_at[pos] == want_rc, "%s: the callback that ran at %d returned %d, want %d", name, pos,
          rc_at[pos], want_rc);
    if (!want && pos > clash + 1 && rc_at[pos] == -ERR_UNAVAILABLE)
      CHECK(rc_at[pos - 1] == -ERR_UNAVAILABLE,
            "%s: undone at %d after one kept at %d: undone callbacks come right after the clash",
            name, pos, pos - 1);
    if (!want && pos > clash)
      CHECK(rc_at[pos] == 0 || rc_at[pos] == -ERR_UNAVAILABLE, "%s: %d returned %d", name, pos,
            rc_at[pos]);
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
  scenario("writes", false, 3, 2, pg ? only_writes_pg : only_writes_sqlite);
  /* The third callback's read learns it: it is undone with the second, the fourth
   * runs after and is kept. */
  int reads_pg[] = {0, 0, C, U, 0}, reads_sqlite[] = {0, 0, C, 0, 0};
  scenario("reads", true, 4, 2, pg ? reads_pg : reads_sqlite);
  /* More statements than the writer leaves unread at once: it stops to read them
   * partway (and learns of the clash there or at the commit), and what it read as
   * committed before stays committed. */
  scenario("many", false, MAX_JOBS, 150, NULL);

  store_close(&store);
  if (failures) return 1;
  printf("store_exec_nowait on %s: as promised\n", pg ? "postgres" : "sqlite");
  return 0;
}
