/* SQLite backend: WAL, synchronous=FULL, and group commit. One writer thread owns
 * the write connection and commits every callback waiting at that moment in one
 * transaction, each in its own savepoint; readers use a connection per thread.
 * When the disk refuses writes (full, I/O error, read-only) the store says so once,
 * answers -ERR_UNAVAILABLE, probes every PROBE_MS and says so again when it heals. */
#include <pthread.h>
#include <semaphore.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "store/migrations.h"
#include "store/store_internal.h"

#define STMT_CACHE 96
#define BATCH_MAX 512
#define PROBE_MS 250

typedef struct {
  char *sql;
  const char *asked; /* the address sql was last asked for by */
  sqlite3_stmt *stmt;
} cached_stmt_t;

typedef struct conn {
  sqlite3 *db;
  cached_stmt_t cache[STMT_CACHE];
  int ncache, next_evict;
  int storage_error; /* the last SQLite result code that blamed the disk, 0 if none */
  struct conn *next;
} conn_t;

struct store_tx {
  const store_ops_t *ops;
  conn_t *conn;
};

typedef struct job {
  store_tx_fn fn;
  void *arg;
  int rc;
  sem_t done; /* posted by the writer: each caller wakes alone, no thundering herd */
  struct job *next;
} job_t;

typedef struct {
  struct store base;
  char *path;
  conn_t *writer;
  pthread_t writer_thread;
  /* lock guards queue_head/tail, stopping and all_conns. A job's rc is written by
   * the writer before it posts the job's semaphore. */
  pthread_mutex_t lock;
  pthread_cond_t work_cond;
  sqlite3_stmt *sp_begin, *sp_release, *sp_rollback; /* the writer's savepoint statements */
  job_t *queue_head, *queue_tail;
  bool stopping;
  conn_t *all_conns;
  pthread_key_t reader_key;
  /* Written by the writer thread only; read by /readyz and the HTTP error path.
   * failure holds a static string naming the cause while failing is true. */
  atomic_bool failing;
  _Atomic(const char *) failure;
  int64_t last_probe_ms;
} sqlite_store_t;

/* True for result codes that say the disk, not the SQL, is at fault. */
static bool is_storage_error(int rc) {
  switch (rc & 0xff) {
  case SQLITE_FULL:
  case SQLITE_IOERR:
  case SQLITE_READONLY:
  case SQLITE_CANTOPEN:
  case SQLITE_NOMEM:
    return true;
  default:
    return false;
  }
}

static const char *storage_cause(int rc) {
  switch (rc & 0xff) {
  case SQLITE_FULL:
    return "storage unavailable: disk full";
  case SQLITE_READONLY:
    return "storage unavailable: the database is read-only";
  case SQLITE_CANTOPEN:
    return "storage unavailable: cannot open the database files";
  case SQLITE_NOMEM:
    return "storage unavailable: out of memory";
  default:
    return "storage unavailable: disk I/O error";
  }
}

/* SQLite counts every allocation under one process-wide mutex unless told not to;
 * the writer and every reader thread would meet on it, and nothing here reads the
 * counts. It must be said before SQLite initialises, hence before main() runs.
 *
 * Each job of a write batch runs in a savepoint, so SQLite copies every page a job
 * first touches into a statement journal, freed again at the job's end. Held in
 * memory (temp_store=MEMORY) that journal grows in 1 KiB pieces, five allocations a
 * page; otherwise it is one piece of the spill size below, and a file past it. 1 MiB
 * (256 pages) keeps every ordinary job in that one piece: a fifth less writer time
 * per bus event (bench_bus under callgrind). */
__attribute__((constructor)) static void sqlite_configure(void) {
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  sqlite3_config(SQLITE_CONFIG_STMTJRNL_SPILL, 1 << 20);
}

static int conn_open(const char *path, conn_t **out) {
  conn_t *c = calloc(1, sizeof(*c));
  if (!c) return -ERR_INTERNAL;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  if (sqlite3_open_v2(path, &c->db, flags, NULL) != SQLITE_OK) {
    log_error("store", "cannot open sqlite database %s: %s", path, sqlite3_errmsg(c->db));
    sqlite3_close(c->db);
    free(c);
    return -ERR_UNAVAILABLE;
  }
  sqlite3_busy_timeout(c->db, 10000);
  /* A database made by an older build or under a loose umask holds emails and
   * password hashes: owner only. SQLite gives -wal and -shm the main file's mode. */
  chmod(path, 0600);
  /* FULL: a committed state change survives power loss; group commit pays for it.
   * temp_store stays SQLite's default (a file past the cache): statement journals then
   * come in one piece (sqlite_configure), and a large sort spills instead of growing
   * without bound in memory. */
  const char *pragmas = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;";
  char *err = NULL;
  if (sqlite3_exec(c->db, pragmas, NULL, NULL, &err) != SQLITE_OK) {
    log_error("store", "cannot configure sqlite: %s", err ? err : "?");
    sqlite3_free(err);
    sqlite3_close(c->db);
    free(c);
    return -ERR_UNAVAILABLE;
  }
  char side[1100];
  snprintf(side, sizeof(side), "%s-wal", path);
  chmod(side, 0600);
  snprintf(side, sizeof(side), "%s-shm", path);
  chmod(side, 0600);
  *out = c;
  return 0;
}

static void conn_close(conn_t *c) {
  for (int i = 0; i < c->ncache; i++) {
    sqlite3_finalize(c->cache[i].stmt);
    free(c->cache[i].sql);
  }
  sqlite3_close(c->db);
  free(c);
}

static sqlite3_stmt *conn_prepare(conn_t *c, const char *sql) {
  /* Nearly every statement is a string literal, asked for by the same address each
   * time: looking for that address first spares comparing the text of up to
   * STMT_CACHE statements. The text is still compared: a caller's buffer may hold
   * other SQL at the same address. */
  for (int i = 0; i < c->ncache; i++)
    if (c->cache[i].asked == sql && strcmp(c->cache[i].sql, sql) == 0) return c->cache[i].stmt;
  for (int i = 0; i < c->ncache; i++)
    if (strcmp(c->cache[i].sql, sql) == 0) {
      c->cache[i].asked = sql;
      return c->cache[i].stmt;
    }
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
    log_error("store", "prepare failed: %s", sqlite3_errmsg(c->db));
    return NULL;
  }
  int slot;
  if (c->ncache < STMT_CACHE) {
    slot = c->ncache++;
  } else {
    slot = c->next_evict;
    c->next_evict = (c->next_evict + 1) % STMT_CACHE;
    sqlite3_finalize(c->cache[slot].stmt);
    free(c->cache[slot].sql);
  }
  c->cache[slot].sql = strdup(sql);
  c->cache[slot].asked = sql;
  c->cache[slot].stmt = st;
  return st;
}

static int plain_exec(conn_t *c, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(c->db, sql, NULL, NULL, &err) != SQLITE_OK) {
    log_error("store", "sqlite: %s", err ? err : sqlite3_errmsg(c->db));
    sqlite3_free(err);
    return -ERR_INTERNAL;
  }
  return 0;
}

static int sq_exec(store_tx_t *tx, store_rows_t **rows, const char *sql, const char *types,
                   va_list ap) {
  if (rows) *rows = NULL;
  sqlite3_stmt *st = conn_prepare(tx->conn, sql);
  if (!st) return -ERR_INTERNAL;
  int idx = 1;
  for (const char *t = types; t && *t; t++, idx++) {
    switch (*t) {
    case 's': {
      const char *v = va_arg(ap, const char *);
      if (v)
        sqlite3_bind_text(st, idx, v, -1, SQLITE_STATIC); /* cleared below, before v goes */
      else
        sqlite3_bind_null(st, idx);
      break;
    }
    case 'i':
      sqlite3_bind_int64(st, idx, va_arg(ap, int64_t));
      break;
    case 'd':
      sqlite3_bind_double(st, idx, va_arg(ap, double));
      break;
    default:
      log_error("store", "bad bind type '%c'", *t);
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      return -ERR_INTERNAL;
    }
  }
  int rc = 0, step = SQLITE_DONE;
  store_rows_t *out = NULL;
  int ncols = sqlite3_column_count(st);
  if (rows && ncols > 0) out = store__rows_new(ncols);
  const char **cells = out ? malloc(sizeof(char *) * (size_t)ncols) : NULL;
  if (out && !cells) rc = -ERR_INTERNAL;
  int nrows = 0;
  while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
    nrows++;
    if (!out) continue;
    for (int i = 0; i < ncols; i++)
      cells[i] = (const char *)sqlite3_column_text(st, i);
    if (store__rows_add(out, ncols, cells) < 0) {
      rc = -ERR_INTERNAL;
      break;
    }
  }
  free(cells);
  if (rc == 0 && step != SQLITE_DONE) {
    int ext = sqlite3_extended_errcode(tx->conn->db);
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) {
      rc = -ERR_CONFLICT;
    } else if (is_storage_error(ext)) {
      /* Not logged here: the writer logs the store's state changes, not each failure. */
      tx->conn->storage_error = ext;
      rc = -ERR_UNAVAILABLE;
    } else {
      log_error("store", "sqlite step failed: %s", sqlite3_errmsg(tx->conn->db));
      rc = -ERR_INTERNAL;
    }
  }
  /* A query answers how many rows it produced, kept or not; a change, how many rows
   * it changed. RETURNING statements are queries. */
  if (rc == 0) rc = ncols > 0 ? nrows : sqlite3_changes(tx->conn->db);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  /* No rows, no result set: many callers return early on a count of 0 and would
   * leak an empty one (hub all_offline_tx, users reg_get_tx, sessions refresh_tx). */
  if (rc <= 0 || !rows || nrows == 0)
    store_rows_free(&out);
  else
    *rows = out;
  return rc;
}

static void step_reset(sqlite3_stmt *st) {
  sqlite3_step(st);
  sqlite3_reset(st);
}

/* The store's health, as the writer last saw it: err 0 after a commit that wrote
 * something, else the SQLite code that blamed the disk. Logs changes only, so a
 * full disk costs two log lines, not one per refused write. Writer thread only. */
static void set_health(sqlite_store_t *s, int err) {
  if (err) {
    const char *cause = storage_cause(err);
    const char *was = atomic_exchange(&s->failure, cause);
    if (!atomic_exchange(&s->failing, true) || was != cause)
      log_error("store", "storage failing (%s); writes are refused until it recovers", cause + 21);
  } else if (atomic_exchange(&s->failing, false)) {
    log_info("store", "storage recovered: writes are accepted again");
  }
}

/* Ends a transaction that could not commit; SQLite may have rolled it back itself. */
static void abandon(conn_t *c) {
  if (!sqlite3_get_autocommit(c->db)) sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
}

/* While failing, a one-row write tells when the disk takes writes again, so that
 * /readyz recovers without waiting for real traffic. */
static void probe(sqlite_store_t *s) {
  s->last_probe_ms = time_mono_ms();
  char sql[160];
  snprintf(sql, sizeof(sql),
           "BEGIN IMMEDIATE; INSERT OR REPLACE INTO store_probe (id, at_ms) VALUES (1, %lld);"
           " COMMIT",
           (long long)time_now_ms());
  if (sqlite3_exec(s->writer->db, sql, NULL, NULL, NULL) == SQLITE_OK) {
    set_health(s, 0);
    return;
  }
  int err = sqlite3_extended_errcode(s->writer->db);
  abandon(s->writer);
  if (is_storage_error(err)) set_health(s, err);
}

static void fail_jobs(job_t *from, job_t *to) {
  for (job_t *j = from; j; j = j == to ? NULL : j->next)
    j->rc = -ERR_UNAVAILABLE;
}

/* Runs one batch in one transaction. A callback that hit a storage error fails
 * with -ERR_UNAVAILABLE whatever it returned; if SQLite rolled the whole
 * transaction back on its own (it may, on a full disk), every job of the batch
 * fails, since the work of those before is gone too. */
static int run_batch(sqlite_store_t *s, job_t *batch, bool *committed) {
  conn_t *c = s->writer;
  store_tx_t tx = {s->base.ops, c};
  int err = 0;
  int64_t wrote = 0;
  if (sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
    err = sqlite3_extended_errcode(c->db);
    if (!is_storage_error(err)) log_error("store", "sqlite BEGIN: %s", sqlite3_errmsg(c->db));
    abandon(c);
    fail_jobs(batch, NULL);
    return err;
  }
  for (job_t *j = batch; j; j = j->next) {
    c->storage_error = 0;
    int64_t before = sqlite3_total_changes64(c->db);
    step_reset(s->sp_begin);
    j->rc = j->fn(&tx, j->arg);
    if (c->storage_error) {
      err = c->storage_error;
      if (j->rc >= 0) j->rc = -ERR_UNAVAILABLE;
    }
    if (sqlite3_get_autocommit(c->db)) {
      fail_jobs(batch, NULL);
      return err ? err : SQLITE_IOERR;
    }
    if (j->rc < 0)
      step_reset(s->sp_rollback);
    else
      wrote += sqlite3_total_changes64(c->db) - before;
    step_reset(s->sp_release);
  }
  if (sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    int cerr = sqlite3_extended_errcode(c->db);
    if (!is_storage_error(cerr)) log_error("store", "sqlite COMMIT: %s", sqlite3_errmsg(c->db));
    abandon(c);
    fail_jobs(batch, NULL);
    return cerr ? cerr : SQLITE_IOERR;
  }
  *committed = true;
  /* Only a commit that wrote something proves the disk healthy again. */
  if (wrote > 0 && !err) return 0;
  return err ? err : -1;
}

/* The writer: takes every waiting job, runs them as one batch, commits once, then
 * wakes the callers. While storage is failing it probes between batches. */
static void *writer_main(void *p) {
  sqlite_store_t *s = p;
  pthread_setname_np(pthread_self(), "store-writer");
  for (;;) {
    pthread_mutex_lock(&s->lock);
    while (!s->queue_head && !s->stopping) {
      if (!atomic_load(&s->failing)) {
        pthread_cond_wait(&s->work_cond, &s->lock);
        continue;
      }
      int64_t wait = s->last_probe_ms + PROBE_MS - time_mono_ms();
      if (wait <= 0) {
        pthread_mutex_unlock(&s->lock);
        probe(s);
        pthread_mutex_lock(&s->lock);
        continue;
      }
      struct timespec ts;
      time_deadline(wait, &ts);
      pthread_cond_timedwait(&s->work_cond, &s->lock, &ts);
    }
    if (!s->queue_head && s->stopping) {
      pthread_mutex_unlock(&s->lock);
      break;
    }
    job_t *batch = s->queue_head, *last = batch;
    int n = 1;
    while (last->next && n < BATCH_MAX) {
      last = last->next;
      n++;
    }
    s->queue_head = last->next;
    if (!s->queue_head) s->queue_tail = NULL;
    last->next = NULL;
    pthread_mutex_unlock(&s->lock);

    bool committed = false;
    int health = run_batch(s, batch, &committed);
    if (health == 0 || is_storage_error(health)) set_health(s, health);
    if (committed) store__run_commit_hooks(&s->base);
    if (is_storage_error(health)) s->last_probe_ms = time_mono_ms();

    /* Wake only the first caller; each woken caller wakes the next (see
     * sq_write), so the writer spends one futex call per batch, not one per job. */
    sem_post(&batch->done);
  }
  return NULL;
}

static int sq_write(store_t *base, store_tx_fn fn, void *arg) {
  sqlite_store_t *s = (sqlite_store_t *)base;
  job_t job = {.fn = fn, .arg = arg};
  sem_init(&job.done, 0, 0);
  pthread_mutex_lock(&s->lock);
  if (s->stopping) {
    pthread_mutex_unlock(&s->lock);
    sem_destroy(&job.done);
    return -ERR_UNAVAILABLE;
  }
  if (s->queue_tail)
    s->queue_tail->next = &job;
  else
    s->queue_head = &job;
  s->queue_tail = &job;
  pthread_cond_signal(&s->work_cond);
  pthread_mutex_unlock(&s->lock);
  while (sem_wait(&job.done) != 0) {
  }
  /* The writer is done with the whole batch; pass the wake-up along the chain. The
   * next job is still blocked on its semaphore, so its memory is alive. */
  if (job.next) sem_post(&job.next->done);
  sem_destroy(&job.done);
  return job.rc;
}

static int sq_read(store_t *base, store_tx_fn fn, void *arg) {
  sqlite_store_t *s = (sqlite_store_t *)base;
  conn_t *c = pthread_getspecific(s->reader_key);
  if (!c) {
    int rc = conn_open(s->path, &c);
    if (rc < 0) return rc;
    pthread_setspecific(s->reader_key, c);
    pthread_mutex_lock(&s->lock);
    c->next = s->all_conns;
    s->all_conns = c;
    pthread_mutex_unlock(&s->lock);
  }
  store_tx_t tx = {base->ops, c};
  /* Through the statement cache: a read is often one small query, and parsing
   * BEGIN and COMMIT each time would cost more than it. */
  sqlite3_stmt *begin = conn_prepare(c, "BEGIN"), *commit = conn_prepare(c, "COMMIT");
  if (!begin || !commit || sqlite3_step(begin) != SQLITE_DONE) {
    if (begin) sqlite3_reset(begin);
    return -ERR_UNAVAILABLE;
  }
  sqlite3_reset(begin);
  int rc = fn(&tx, arg);
  sqlite3_step(commit);
  sqlite3_reset(commit);
  return rc;
}

static int sq_ping(store_t *base) {
  sqlite_store_t *s = (sqlite_store_t *)base;
  /* An embedded database is reachable while the process lives; it is ready while
   * the disk takes its writes. */
  return atomic_load(&s->failing) ? -ERR_UNAVAILABLE : 0;
}

static const char *sq_failure(store_t *base) {
  sqlite_store_t *s = (sqlite_store_t *)base;
  return atomic_load(&s->failing) ? atomic_load(&s->failure) : NULL;
}

static int migrate(conn_t *c, const char *path) {
  if (plain_exec(c, "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                    " name TEXT NOT NULL, applied_at TEXT NOT NULL)") < 0)
    return -ERR_UNAVAILABLE;
  /* A newer iotfin wrote this database: an older one must not touch it, since it does not
   * know what the newer tables mean (upgrades only go forward). */
  int64_t known = 0, have = 0;
  for (int i = 0; i < store_migrations_count; i++)
    if (store_migrations[i].version > known) known = store_migrations[i].version;
  store_tx_t vtx = {&store__sqlite_ops, c};
  store_rows_t *vrows = NULL;
  if (store_exec(&vtx, &vrows, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", "") > 0)
    have = store_rows_int(vrows, 0, 0);
  store_rows_free(&vrows);
  if (have > known) {
    log_error("store",
              "the database %s has schema version %lld, newer than this iotfin %s knows (%lld); "
              "run a newer iotfin, or restore a backup taken before the upgrade",
              path, (long long)have, IOTFIN_VERSION, (long long)known);
    return -ERR_CONFLICT;
  }
  for (int i = 0; i < store_migrations_count; i++) {
    const store_migration_t *m = &store_migrations[i];
    if (m->dialect[0] && strcmp(m->dialect, "sqlite") != 0) continue;
    store_tx_t tx = {&store__sqlite_ops, c};
    store_rows_t *rows = NULL;
    int n = store_exec(&tx, &rows, "SELECT 1 FROM schema_migrations WHERE version = ?", "i",
                       (int64_t)m->version);
    store_rows_free(&rows);
    if (n < 0) return -ERR_UNAVAILABLE;
    if (n > 0) continue;
    if (plain_exec(c, "BEGIN IMMEDIATE") < 0) return -ERR_UNAVAILABLE;
    if (plain_exec(c, m->sql) < 0 ||
        store_exec(&tx, NULL,
                   "INSERT INTO schema_migrations (version, name, applied_at) "
                   "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ','now'))",
                   "is", (int64_t)m->version, m->name) < 0) {
      plain_exec(c, "ROLLBACK");
      log_error("store", "migration %d_%s failed", m->version, m->name);
      return -ERR_UNAVAILABLE;
    }
    if (plain_exec(c, "COMMIT") < 0) return -ERR_UNAVAILABLE;
    log_info("store", "applied migration %03d_%s", m->version, m->name);
  }
  return 0;
}

static void sq_close(store_t *base);

static int sq_open(const char *path, store_t **out) {
  sqlite_store_t *s = calloc(1, sizeof(*s));
  if (!s) return -ERR_INTERNAL;
  store__base_init(&s->base, &store__sqlite_ops);
  s->path = strdup(path);
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->work_cond, NULL);

  pthread_key_create(&s->reader_key, NULL);
  int rc = conn_open(path, &s->writer);
  if (rc == 0) rc = migrate(s->writer, path);
  /* Not a migration: the probe row is the store's own business, not the schema's. */
  if (rc == 0 && plain_exec(s->writer, "CREATE TABLE IF NOT EXISTS store_probe (id INTEGER "
                                       "PRIMARY KEY, at_ms INTEGER NOT NULL)") < 0)
    rc = -ERR_UNAVAILABLE;
  if (rc == 0 &&
      (sqlite3_prepare_v2(s->writer->db, "SAVEPOINT job", -1, &s->sp_begin, NULL) != SQLITE_OK ||
       sqlite3_prepare_v2(s->writer->db, "RELEASE job", -1, &s->sp_release, NULL) != SQLITE_OK ||
       sqlite3_prepare_v2(s->writer->db, "ROLLBACK TO job", -1, &s->sp_rollback, NULL) !=
           SQLITE_OK))
    rc = -ERR_UNAVAILABLE;
  if (rc == 0 && pthread_create(&s->writer_thread, NULL, writer_main, s) != 0) rc = -ERR_INTERNAL;
  if (rc < 0) {
    if (s->writer) conn_close(s->writer);
    pthread_key_delete(s->reader_key);
    free(s->path);
    free(s);
    return rc;
  }
  *out = &s->base;
  return 0;
}

static void sq_close(store_t *base) {
  sqlite_store_t *s = (sqlite_store_t *)base;
  pthread_mutex_lock(&s->lock);
  s->stopping = true;
  pthread_cond_signal(&s->work_cond);
  pthread_mutex_unlock(&s->lock);
  pthread_join(s->writer_thread, NULL);
  sqlite3_finalize(s->sp_begin);
  sqlite3_finalize(s->sp_release);
  sqlite3_finalize(s->sp_rollback);
  conn_close(s->writer);
  for (conn_t *c = s->all_conns, *next; c; c = next) {
    next = c->next;
    conn_close(c);
  }
  pthread_key_delete(s->reader_key);
  pthread_mutex_destroy(&s->lock);
  store__base_free(&s->base);
  pthread_cond_destroy(&s->work_cond);

  free(s->path);
  free(s);
}

static int64_t sq_last_rowid(store_tx_t *tx) { return sqlite3_last_insert_rowid(tx->conn->db); }

const store_ops_t store__sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .write = sq_write,
    .read = sq_read,
    .exec = sq_exec,
    .ping = sq_ping,
    .failure = sq_failure,
    .last_rowid = sq_last_rowid,
};
