/* Unit tests for src/store/ (store.c and store_sqlite.c) on a real SQLite file in a
 * fresh mkdtemp folder: migrations, group-committed writes with per-callback
 * rollback under concurrency, error mapping, bindings and the rows accessors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/errors.h"
#include "store/migrations.h"
#include "store/store.h"

typedef struct {
  char dir[64];
  char url[128];
  store_t *s;
} fixture_t;

static int create_table(store_tx_t *tx, void *arg) {
  (void)arg;
  return store_exec(tx, NULL,
                    "CREATE TABLE t (id TEXT PRIMARY KEY, thread INTEGER, n INTEGER, v TEXT,"
                    " big INTEGER, d REAL, req TEXT NOT NULL DEFAULT 'x')",
                    "");
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  if (!f) return -1;
  strcpy(f->dir, "/tmp/iotfin-store-XXXXXX");
  if (!mkdtemp(f->dir)) return -1;
  snprintf(f->url, sizeof(f->url), "sqlite:%s/t.db", f->dir);
  if (store_open(f->url, &f->s) != 0) return -1;
  if (store_write(f->s, create_table, NULL) < 0) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  store_close(&f->s);
  DIR *d = opendir(f->dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      char p[512];
      snprintf(p, sizeof(p), "%s/%s", f->dir, e->d_name);
      if (e->d_name[0] != '.') unlink(p);
    }
    closedir(d);
  }
  rmdir(f->dir);
  free(f);
  return 0;
}

/* ---- small transaction bodies ------------------------------------------------------ */

typedef struct {
  const char *sql;
  const char *text; /* first column of the first row, copied out */
  char out[256];
  int64_t count; /* store_exec's return */
} query_t;

/* Runs q->sql (no parameters) and copies the first cell. */
static int run_query(store_tx_t *tx, void *arg) {
  query_t *q = arg;
  store_rows_t *r = NULL;
  int n = store_exec(tx, &r, q->sql, "");
  q->count = n;
  q->out[0] = 0;
  q->text = NULL;
  if (n > 0 && store_rows_text(r, 0, 0)) {
    snprintf(q->out, sizeof(q->out), "%s", store_rows_text(r, 0, 0));
    q->text = q->out;
  }
  store_rows_free(&r);
  return n < 0 ? n : 0;
}

/* The first cell of sql read through store_read, as an integer. */
static int64_t read_int(store_t *s, const char *sql) {
  query_t q = {.sql = sql};
  assert_int_equal(store_read(s, run_query, &q), 0);
  assert_non_null(q.text);
  return strtoll(q.text, NULL, 10);
}

typedef struct {
  const char *id;
  int64_t thread, n;
  int result; /* what the callback returns after inserting */
} insert_t;

static int insert_row(store_tx_t *tx, void *arg) {
  insert_t *in = arg;
  int rc = store_exec(tx, NULL, "INSERT INTO t (id, thread, n) VALUES (?, ?, ?)", "sii", in->id,
                      in->thread, in->n);
  if (rc < 0) return rc;
  return in->result;
}

/* ---- tests ------------------------------------------------------------------------- */

static void test_open_applies_migrations(void **state) {
  fixture_t *f = *state;
  int want = 0;
  for (int i = 0; i < store_migrations_count; i++)
    if (!store_migrations[i].dialect[0] || strcmp(store_migrations[i].dialect, "sqlite") == 0)
      want++;
  assert_true(want > 0);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM schema_migrations"), want);
  /* The schema of 001 is there. */
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND"
                                  " name IN ('events', 'sessions', 'devices')"),
                   3);
  assert_string_equal(store_backend(f->s), "sqlite");
  assert_int_equal(store_ping(f->s), 0);
}

static void test_reopen_does_not_reapply(void **state) {
  fixture_t *f = *state;
  query_t before = {.sql = "SELECT group_concat(version || ':' || applied_at) FROM "
                           "(SELECT * FROM schema_migrations ORDER BY version)"};
  assert_int_equal(store_read(f->s, run_query, &before), 0);
  assert_non_null(before.text);
  insert_t in = {"kept", 1, 1, 0};
  assert_int_equal(store_write(f->s, insert_row, &in), 0);

  store_close(&f->s);
  assert_null(f->s);
  usleep(5000); /* applied_at has milliseconds: a reapply would change it */
  assert_int_equal(store_open(f->url, &f->s), 0);

  query_t after = {.sql = before.sql};
  assert_int_equal(store_read(f->s, run_query, &after), 0);
  assert_string_equal(after.out, before.out);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t WHERE id = 'kept'"), 1);
}

static void test_write_commits_and_read_sees_it(void **state) {
  fixture_t *f = *state;
  insert_t in = {"a", 0, 42, 7};
  /* A non-negative return commits and is what store_write returns. */
  assert_int_equal(store_write(f->s, insert_row, &in), 7);
  assert_int_equal(read_int(f->s, "SELECT n FROM t WHERE id = 'a'"), 42);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), 1);
}

static void test_failing_callback_rolls_back(void **state) {
  fixture_t *f = *state;
  insert_t in = {"b", 0, 1, -ERR_VALIDATION_FAILED};
  assert_int_equal(store_write(f->s, insert_row, &in), -ERR_VALIDATION_FAILED);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), 0);
  /* The same id can be written afterwards: nothing of the failed callback remains. */
  in.result = 0;
  assert_int_equal(store_write(f->s, insert_row, &in), 0);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), 1);
}

static int hook_calls;
static void count_hook(void *arg) { __atomic_add_fetch((int *)arg, 1, __ATOMIC_SEQ_CST); }

static void test_commit_hook(void **state) {
  fixture_t *f = *state;
  hook_calls = 0;
  assert_int_equal(store_add_commit_hook(f->s, count_hook, &hook_calls), 0);
  insert_t in = {"h", 0, 1, 0};
  assert_int_equal(store_write(f->s, insert_row, &in), 0);
  /* The hook runs before the writer wakes the caller. */
  assert_int_equal(__atomic_load_n(&hook_calls, __ATOMIC_SEQ_CST), 1);
  store_remove_commit_hook(f->s, count_hook, &hook_calls);
}

#define NTHREADS 8
#define NWRITES 200

typedef struct {
  store_t *s;
  int thread;
  int bad_returns; /* store_write results that were not what the callback returned */
  int64_t seen;    /* rows of this thread seen by a read after the writes */
} worker_t;

static void *writer_thread(void *p) {
  worker_t *w = p;
  for (int j = 0; j < NWRITES; j++) {
    char id[32];
    snprintf(id, sizeof(id), "w%d-%d", w->thread, j);
    /* Every tenth callback inserts, then fails: only its own row must vanish. */
    int want = j % 10 == 0 ? -ERR_CONFLICT : j;
    insert_t in = {id, w->thread, j, want};
    if (store_write(w->s, insert_row, &in) != want) w->bad_returns++;
  }
  char sql[128];
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM t WHERE thread = %d", w->thread);
  query_t q = {.sql = sql};
  if (store_read(w->s, run_query, &q) == 0 && q.text) w->seen = strtoll(q.text, NULL, 10);
  return NULL;
}

static void test_concurrent_writers_and_rollbacks(void **state) {
  fixture_t *f = *state;
  hook_calls = 0;
  assert_int_equal(store_add_commit_hook(f->s, count_hook, &hook_calls), 0);
  pthread_t th[NTHREADS];
  worker_t w[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    w[i] = (worker_t){f->s, i, 0, -1};
    assert_int_equal(pthread_create(&th[i], NULL, writer_thread, &w[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++)
    pthread_join(th[i], NULL);
  store_remove_commit_hook(f->s, count_hook, &hook_calls);

  const int per_thread = NWRITES - NWRITES / 10;
  for (int i = 0; i < NTHREADS; i++) {
    assert_int_equal(w[i].bad_returns, 0);
    assert_int_equal(w[i].seen, per_thread); /* each reader sees its own writes */
  }
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), NTHREADS * per_thread);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t WHERE n % 10 = 0"), 0);
  assert_int_equal(read_int(f->s, "SELECT count(DISTINCT thread) FROM t"), NTHREADS);
  /* Group commit: at least one commit, and no more commits than callbacks. */
  int hooks = __atomic_load_n(&hook_calls, __ATOMIC_SEQ_CST);
  assert_in_range(hooks, 1, NTHREADS * NWRITES);
}

static int insert_twice(store_tx_t *tx, void *arg) {
  int *second = arg;
  int rc = store_exec(tx, NULL, "INSERT INTO t (id, n) VALUES ('dup', 1)", "");
  if (rc != 1) return -ERR_INTERNAL;
  *second = store_exec(tx, NULL, "INSERT INTO t (id, n) VALUES ('dup', 2)", "");
  return *second < 0 ? *second : 0;
}

static int insert_not_null_violation(store_tx_t *tx, void *arg) {
  (void)arg;
  return store_exec(tx, NULL, "INSERT INTO t (id, req) VALUES ('nn', NULL)", "");
}

static void test_unique_violation_is_conflict(void **state) {
  fixture_t *f = *state;
  int second = 0;
  assert_int_equal(store_write(f->s, insert_twice, &second), -ERR_CONFLICT);
  assert_int_equal(second, -ERR_CONFLICT);
  /* The callback failed, so its first insert is gone too. */
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), 0);

  /* Across callbacks: the second insert of an existing key is a conflict. */
  insert_t in = {"once", 0, 1, 0};
  assert_int_equal(store_write(f->s, insert_row, &in), 0);
  assert_int_equal(store_write(f->s, insert_row, &in), -ERR_CONFLICT);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), 1);

  /* Other constraint failures are not conflicts. */
  assert_int_equal(store_write(f->s, insert_not_null_violation, NULL), -ERR_INTERNAL);
}

static int insert_serial_twice(store_tx_t *tx, void *arg) {
  (void)arg;
  const char *sql = "INSERT INTO devices (id, serial, status, created_at) VALUES (?, ?, ?, ?)";
  int rc = store_exec(tx, NULL, sql, "ssss", "d1", "SN-0001", "unclaimed", "2026-01-01");
  if (rc != 1) return -ERR_INTERNAL;
  return store_exec(tx, NULL, sql, "ssss", "d2", "SN-0001", "unclaimed", "2026-01-01");
}

static void test_unique_column_is_conflict(void **state) {
  fixture_t *f = *state;
  assert_int_equal(store_write(f->s, insert_serial_twice, NULL), -ERR_CONFLICT);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM devices"), 0);
}

typedef struct {
  int rc_insert, rc_select;
  int is_null_v, is_null_id;
  const char *v_text;
  int64_t expr;
} null_result_t;

static int bind_null(store_tx_t *tx, void *arg) {
  null_result_t *r = arg;
  r->rc_insert =
      store_exec(tx, NULL, "INSERT INTO t (id, v) VALUES (?, ?)", "ss", "n1", (const char *)NULL);
  store_rows_t *rows = NULL;
  r->rc_select = store_exec(tx, &rows, "SELECT v, id, ? IS NULL FROM t WHERE id = ?", "ss",
                            (const char *)NULL, "n1");
  r->is_null_v = store_rows_is_null(rows, 0, 0);
  r->is_null_id = store_rows_is_null(rows, 0, 1);
  r->v_text = store_rows_text(rows, 0, 0);
  r->expr = store_rows_int(rows, 0, 2);
  store_rows_free(&rows);
  return 0;
}

static void test_null_binding(void **state) {
  fixture_t *f = *state;
  null_result_t r;
  memset(&r, 0, sizeof(r));
  r.v_text = "sentinel";
  assert_int_equal(store_write(f->s, bind_null, &r), 0);
  assert_int_equal(r.rc_insert, 1);
  assert_int_equal(r.rc_select, 1);
  assert_true(r.is_null_v);
  assert_false(r.is_null_id);
  assert_null(r.v_text);
  assert_int_equal(r.expr, 1);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t WHERE v IS NULL AND id = 'n1'"), 1);
}

static const int64_t int64_values[] = {INT64_MAX, INT64_MIN, 0, -1, 4294967296LL, 1700000000123LL};
#define NINT64 (sizeof(int64_values) / sizeof(int64_values[0]))

typedef struct {
  int64_t got[NINT64];
  char text[NINT64][32];
  char dtext[32];
} int64_result_t;

static int bind_int64(store_tx_t *tx, void *arg) {
  int64_result_t *r = arg;
  for (size_t i = 0; i < NINT64; i++) {
    char id[16];
    snprintf(id, sizeof(id), "i%zu", i);
    if (store_exec(tx, NULL, "INSERT INTO t (id, big, d) VALUES (?, ?, ?)", "sid", id,
                   int64_values[i], 1.5) != 1)
      return -ERR_INTERNAL;
  }
  for (size_t i = 0; i < NINT64; i++) {
    char id[16];
    snprintf(id, sizeof(id), "i%zu", i);
    store_rows_t *rows = NULL;
    /* Compare in SQL too, so the value is stored as the integer, not via text. */
    if (store_exec(tx, &rows, "SELECT big, d, big = ? FROM t WHERE id = ?", "is", int64_values[i],
                   id) != 1 ||
        store_rows_int(rows, 0, 2) != 1) {
      store_rows_free(&rows);
      return -ERR_INTERNAL;
    }
    r->got[i] = store_rows_int(rows, 0, 0);
    snprintf(r->text[i], sizeof(r->text[i]), "%s", store_rows_text(rows, 0, 0));
    snprintf(r->dtext, sizeof(r->dtext), "%s", store_rows_text(rows, 0, 1));
    store_rows_free(&rows);
  }
  return 0;
}

static void test_int64_and_double_binding(void **state) {
  fixture_t *f = *state;
  int64_result_t r;
  memset(&r, 0, sizeof(r));
  assert_int_equal(store_write(f->s, bind_int64, &r), 0);
  for (size_t i = 0; i < NINT64; i++) {
    char want[32];
    snprintf(want, sizeof(want), "%lld", (long long)int64_values[i]);
    assert_string_equal(r.text[i], want);
    assert_true(r.got[i] == int64_values[i]);
  }
  assert_string_equal(r.dtext, "1.5");
}

typedef struct {
  int rc;
  int count, ncount_null;
  char first[16];       /* row 2, column 0, copied */
  const char *cells[3]; /* out-of-range lookups: pointers, expected NULL */
  int64_t ints[3];
  int nulls[4];
  int update_rc, select_no_rows_rc, null_rows_after_free;
} rows_result_t;

static int rows_accessors(store_tx_t *tx, void *arg) {
  rows_result_t *r = arg;
  for (int i = 0; i < 3; i++) {
    char id[8];
    snprintf(id, sizeof(id), "r%d", i);
    store_exec(tx, NULL, "INSERT INTO t (id, n, v) VALUES (?, ?, ?)", "sis", id, (int64_t)i * 10,
               i == 1 ? NULL : "text");
  }
  store_rows_t *rows = NULL;
  r->rc = store_exec(tx, &rows, "SELECT id, n, v FROM t WHERE id LIKE 'r%' ORDER BY id", "");
  r->count = store_rows_count(rows);
  const char *c = store_rows_text(rows, 2, 0);
  snprintf(r->first, sizeof(r->first), "%s", c ? c : "(null)");
  r->cells[0] = store_rows_text(rows, 3, 0);  /* out of range row */
  r->cells[1] = store_rows_text(rows, 0, 3);  /* out of range column */
  r->cells[2] = store_rows_text(rows, -1, 0); /* negative */
  r->ints[0] = store_rows_int(rows, 2, 1);
  r->ints[1] = store_rows_int(rows, 1, 2); /* NULL reads as 0 */
  r->ints[2] = store_rows_int(rows, 9, 9);
  r->nulls[0] = store_rows_is_null(rows, 1, 2);
  r->nulls[1] = store_rows_is_null(rows, 0, 2);
  r->nulls[2] = store_rows_is_null(rows, 5, 0);
  r->nulls[3] = store_rows_is_null(rows, 0, 0);
  store_rows_free(&rows);
  r->null_rows_after_free = rows == NULL;
  store_rows_free(&rows); /* freeing NULL again is harmless */
  r->ncount_null = store_rows_count(NULL);

  r->update_rc = store_exec(tx, NULL, "UPDATE t SET v = 'u' WHERE id LIKE 'r%'", "");
  rows = NULL;
  r->select_no_rows_rc = store_exec(tx, &rows, "SELECT id FROM t WHERE id = 'none'", "");
  /* No rows: an empty set (or none), never garbage. */
  if (rows && store_rows_count(rows) != 0) r->select_no_rows_rc = -999;
  store_rows_free(&rows);
  return 0;
}

static void test_rows_accessors(void **state) {
  fixture_t *f = *state;
  rows_result_t r;
  memset(&r, 0, sizeof(r));
  assert_int_equal(store_write(f->s, rows_accessors, &r), 0);
  assert_int_equal(r.rc, 3);
  assert_int_equal(r.count, 3);
  assert_string_equal(r.first, "r2");
  assert_null(r.cells[0]);
  assert_null(r.cells[1]);
  assert_null(r.cells[2]);
  assert_int_equal(r.ints[0], 20);
  assert_int_equal(r.ints[1], 0);
  assert_int_equal(r.ints[2], 0);
  assert_true(r.nulls[0]);
  assert_false(r.nulls[1]);
  assert_true(r.nulls[2]);
  assert_false(r.nulls[3]);
  assert_true(r.null_rows_after_free);
  assert_int_equal(r.ncount_null, 0);
  assert_int_equal(r.update_rc, 3); /* changed rows */
  assert_int_equal(r.select_no_rows_rc, 0);
}

typedef struct {
  int bad_sql, bad_type, missing_table;
} errors_result_t;

static int bad_statements(store_tx_t *tx, void *arg) {
  errors_result_t *r = arg;
  r->bad_sql = store_exec(tx, NULL, "SELEC nonsense", "");
  r->bad_type = store_exec(tx, NULL, "SELECT ?", "x", "a");
  r->missing_table = store_exec(tx, NULL, "SELECT * FROM no_such_table", "");
  return 0;
}

static void test_bad_statements_are_internal(void **state) {
  fixture_t *f = *state;
  errors_result_t r = {0, 0, 0};
  assert_int_equal(store_write(f->s, bad_statements, &r), 0);
  assert_int_equal(r.bad_sql, -ERR_INTERNAL);
  assert_int_equal(r.bad_type, -ERR_INTERNAL);
  assert_int_equal(r.missing_table, -ERR_INTERNAL);
  /* The store still works afterwards. */
  insert_t in = {"after", 0, 1, 0};
  assert_int_equal(store_write(f->s, insert_row, &in), 0);
}

typedef struct {
  store_t *s;
  int64_t first, second;
} snapshot_t;

static int count_rows(store_tx_t *tx, int64_t *out) {
  store_rows_t *rows = NULL;
  int rc = store_exec(tx, &rows, "SELECT count(*) FROM t", "");
  *out = rc == 1 ? store_rows_int(rows, 0, 0) : -1;
  store_rows_free(&rows);
  return rc;
}

static int read_write_read(store_tx_t *tx, void *arg) {
  snapshot_t *sn = arg;
  count_rows(tx, &sn->first);
  insert_t in = {"during", 0, 1, 0};
  if (store_write(sn->s, insert_row, &in) != 0) return -ERR_INTERNAL;
  count_rows(tx, &sn->second);
  return 0;
}

static void test_read_is_a_snapshot(void **state) {
  fixture_t *f = *state;
  snapshot_t sn = {f->s, -1, -1};
  assert_int_equal(store_read(f->s, read_write_read, &sn), 0);
  assert_int_equal(sn.first, 0);
  assert_int_equal(sn.second, 0); /* the commit is not seen inside the snapshot */
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), 1);
}

static void test_open_failures(void **state) {
  (void)state;
  store_t *s = (store_t *)1;
  assert_int_equal(store_open("sqlite:/nonexistent-iotfin-dir/x/t.db", &s), -ERR_UNAVAILABLE);
  assert_null(s);
  s = (store_t *)1;
  assert_int_equal(store_open("mysql://localhost/x", &s), -ERR_UNAVAILABLE);
  assert_null(s);
  store_close(&s); /* closing nothing is harmless */
}

/* A result set wider than the 64 cells sq_exec copies per row: the rows must still
 * hold every column (or the call must fail), never a short row read as a long one. */
static int wide_select(store_tx_t *tx, void *arg) {
  char *out = arg;
  char sql[1024] = "SELECT 1";
  for (int i = 2; i <= 70; i++)
    snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), ",%d", i);
  store_rows_t *rows = NULL;
  int rc = store_exec(tx, &rows, sql, "");
  if (rc == 1) {
    const char *last = store_rows_text(rows, 0, 69);
    snprintf(out, 16, "%s", last ? last : "(null)");
  } else {
    snprintf(out, 16, "rc=%d", rc);
  }
  store_rows_free(&rows);
  return 0;
}

static void test_wide_rows(void **state) {
  fixture_t *f = *state;
  char last[16] = "";
  assert_int_equal(store_read(f->s, wide_select, last), 0);
  assert_string_equal(last, "70");
}

/* A database that may not grow (max_page_count) fails the way a full disk does:
 * SQLITE_FULL. The store must say -ERR_UNAVAILABLE with the cause, keep nothing of
 * the refused write, and heal by itself once writes fit again. */
static int set_max_pages(store_tx_t *tx, void *arg) {
  char sql[64];
  snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %d", *(int *)arg);
  int rc = store_exec(tx, NULL, sql, "");
  return rc < 0 ? rc : 0;
}

static int insert_big(store_tx_t *tx, void *arg) {
  return store_exec(tx, NULL, "INSERT INTO t (id, v) VALUES (?, hex(randomblob(200000)))", "s",
                    (const char *)arg);
}

static void test_full_database_is_unavailable_and_recovers(void **state) {
  fixture_t *f = *state;
  assert_int_equal(store_ping(f->s), 0);
  assert_null(store_failure(f->s));
  int pages = 1; /* SQLite keeps it at the current size */
  assert_int_equal(store_write(f->s, set_max_pages, &pages), 0);
  assert_int_equal(store_write(f->s, insert_big, "a"), -ERR_UNAVAILABLE);
  assert_int_equal(store_ping(f->s), -ERR_UNAVAILABLE);
  assert_non_null(store_failure(f->s));
  assert_non_null(strstr(store_failure(f->s), "disk full"));
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), 0);
  /* A transaction that writes nothing commits, but proves nothing. */
  pages = 1000000;
  assert_int_equal(store_write(f->s, set_max_pages, &pages), 0);
  int waited = 0;
  while (store_ping(f->s) != 0 && waited < 3000) {
    usleep(10 * 1000);
    waited += 10;
  }
  assert_int_equal(store_ping(f->s), 0); /* the writer's probe found room */
  assert_null(store_failure(f->s));
  assert_int_equal(store_write(f->s, insert_big, "b"), 1);
  assert_int_equal(read_int(f->s, "SELECT count(*) FROM t"), 1);
}

/* Notifications carry only [A-Za-z0-9._:-] (they are spliced into a NOTIFY); a
 * caller's mistake is refused on SQLite too, where nothing is sent. One process owns
 * a SQLite file, so it holds every leadership. */
static int notify_tx(store_tx_t *tx, void *arg) {
  const char **tp = arg;
  return store_notify(tx, tp[0], tp[1]);
}

static void test_notify_text_and_leadership_on_sqlite(void **state) {
  fixture_t *f = *state;
  const char *ok[] = {"revoke", "01a2366a-f61a-7000-bf5a-9e798a27a99a"};
  const char *no_payload[] = {"keys", NULL};
  const char *quote[] = {"revoke", "x'; DROP TABLE t; --"};
  const char *space[] = {"a b", NULL};
  const char *empty[] = {"", NULL};
  assert_int_equal(store_write(f->s, notify_tx, ok), 0);
  assert_int_equal(store_write(f->s, notify_tx, no_payload), 0);
  assert_int_equal(store_write(f->s, notify_tx, quote), -ERR_INTERNAL);
  assert_int_equal(store_write(f->s, notify_tx, space), -ERR_INTERNAL);
  assert_int_equal(store_write(f->s, notify_tx, empty), -ERR_INTERNAL);
  char long_payload[200];
  memset(long_payload, 'a', sizeof(long_payload) - 1);
  long_payload[sizeof(long_payload) - 1] = 0;
  const char *too_long[] = {"revoke", long_payload};
  assert_int_equal(store_write(f->s, notify_tx, too_long), -ERR_INTERNAL);
  assert_int_equal(store_leader(f->s, "ingest"), 1);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_open_applies_migrations),
      T(test_reopen_does_not_reapply),
      T(test_write_commits_and_read_sees_it),
      T(test_failing_callback_rolls_back),
      T(test_commit_hook),
      T(test_concurrent_writers_and_rollbacks),
      T(test_unique_violation_is_conflict),
      T(test_unique_column_is_conflict),
      T(test_null_binding),
      T(test_int64_and_double_binding),
      T(test_rows_accessors),
      T(test_bad_statements_are_internal),
      T(test_read_is_a_snapshot),
      T(test_full_database_is_unavailable_and_recovers),
      cmocka_unit_test(test_open_failures),
      T(test_notify_text_and_leadership_on_sqlite),
      /* Last: it shows a memory error, which ASan turns into an abort. */
      T(test_wide_rows),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
