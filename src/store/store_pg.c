/* PostgreSQL backend (libpq): the same contract as the SQLite one. One writer
 * thread owns the write connection and commits every callback waiting at that
 * moment in one transaction, each in its own savepoint (synchronous_commit=on, so a
 * returned store_write() is on the server's disk). Inside a batch the writer's
 * connection is in libpq's pipeline mode: the savepoint statements between jobs, the
 * notifications and the COMMIT are sent without waiting for their answers, so a job
 * costs only the round trips of its own statements; each reading thread has a
 * connection of its own (handed on when the thread ends) and reads in a REPEATABLE
 * READ snapshot. Callers write `?` placeholders; they are rewritten to $1..$n here,
 * and bound with the types the caller names.
 *
 * A lost or refusing server is storage failing: calls answer -ERR_UNAVAILABLE (so
 * HTTP answers 503), the writer reconnects and probes every PROBE_MS, and says so
 * once when it fails and once when it heals. Passwords never reach a log line. */
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "store/migrations.h"
#include "store/store_internal.h"

#define BATCH_MAX 512
#define PROBE_MS 250
#define MAX_PARAMS 64
/* Statements prepared per connection. The code has about a hundred distinct ones;
 * past this many a statement simply runs unprepared, so nothing is ever evicted. */
#define STMT_CACHE 256
/* Any constant both old and new iotfin agree on: the key of the migration lock. */
#define MIGRATION_LOCK_KEY 0x696f7466696e01LL
/* Every write transaction takes this lock first (transaction-scoped): commits of
 * all instances then happen one after another, so events.seq order is commit order
 * (a reader past seq N never sees an N-1 appear later), and two instances' batches
 * never wait on each other's rows halfway (no deadlocks). Group commit keeps the
 * cost at one lock per batch. */
#define ORDER_LOCK_CLASS 0x696f7402
/* A writer that stalls inside its transaction (a paused or cut-off instance) would
 * hold the order lock for everyone: the server ends such a session after this. */
#define WRITER_IDLE_TX_TIMEOUT "2s"
#define NOTES_CAP 4096
/* Statements in flight on the pipeline before the writer stops to read their answers:
 * their answers must fit the socket's buffers, or the server, blocked writing them,
 * would stop reading while the writer, blocked sending, never reads. */
#define UNREAD_MAX 256
/* A reader's connection used this recently is taken to be alive (see read_on). */
#define WARM_MS 1000
#define MAX_LISTENERS 8
#define MAX_LEADERS 8

#define CAUSE_LOST "storage unavailable: the database is not reachable"
#define CAUSE_READONLY "storage unavailable: the database is read-only"
#define CAUSE_FULL "storage unavailable: the database is out of space or resources"

typedef struct pconn {
  PGconn *pg;
  char *stmts[STMT_CACHE]; /* types "\x01" sql of statement "s<i>", for this session */
  int nstmts;
  /* Pipeline mode (the writer, inside a batch): statements sent whose results are not
   * read yet. They are read before the next statement's, or at the batch's end. */
  bool piped;
  int unread;
  /* The job (its index in the batch; -1 for the batch's own statements) of each
   * unread statement, oldest at owners[ohead]: an answer says whose statement failed. */
  int owners[UNREAD_MAX];
  int ohead;
  /* The first job whose statement failed since the last sync point, else -1; with a
   * failed store_exec_nowait, bad_rc is its error (else 0: the job saw its own). */
  int bad_job;
  int bad_rc;
  /* A reader: its last read's COMMIT and sync point were sent and not read yet; and
   * when (monotonic ms) its last read ended. */
  bool commit_unread;
  int64_t last_read_ms;
  int64_t last_reset_ms;
  struct pg_store *owner;
  struct pconn *next;     /* in the idle readers */
  struct pconn *all_next; /* in every reader, for the close */
} pconn_t;

/* failed: a statement failed, so PostgreSQL refuses the rest of this transaction
 * (or savepoint). cause: set when the failure blames the server, not the SQL. */
struct store_tx {
  const store_ops_t *ops;
  pconn_t *conn;
  bool failed;
  const char *cause;
  int job; /* in the writer's batch: the running job's index, -1 between jobs */
};

typedef struct job {
  store_tx_fn fn;
  void *arg;
  int rc;
  sem_t done;
  struct job *next;
} job_t;

typedef struct {
  store_listen_fn fn;
  void *arg;
} listener_t;

typedef struct {
  char name[64];
  int key;
  atomic_bool held;
} leader_t;

typedef struct pg_store {
  struct store base;
  char *url;          /* as given, with its password: for libpq only */
  char redacted[512]; /* for log lines */
  pconn_t *writer;
  pthread_t writer_thread;
  pthread_mutex_t lock; /* queue, stopping, idle readers */
  pthread_cond_t work_cond;
  job_t *queue_head, *queue_tail;
  bool stopping;
  bool probe_asked; /* a reader saw the server go: the writer should look now */
  /* A thread reads on a connection of its own, kept for its life (its statements
   * stay prepared there; a pool shared by all threads measured a third fewer reads a
   * second). A new connection costs the server a process start and the client a
   * SCRAM exchange (25-30 ms here): one whose thread ended waits in idle_readers for
   * the next new thread instead of being closed. */
  pthread_key_t reader_key;
  pconn_t *idle_readers;
  pconn_t *all_readers;
  atomic_bool failing;
  _Atomic(const char *) failure;
  int64_t last_probe_ms;
  bool writer_thread_started;
  /* The current batch's notifications as NOTIFY statements, sent with its COMMIT.
   * Writer thread only. Past NOTES_CAP, one "resync" stands for all of them. */
  char notes[NOTES_CAP];
  size_t notes_len;
  /* The current batch's jobs by index, and notes_len before each (writer thread). */
  job_t *jobs[BATCH_MAX];
  size_t notes_at[BATCH_MAX];
  /* The listener thread and its own connection (LISTEN, leadership locks). */
  pthread_t listen_thread;
  bool listen_thread_started;
  atomic_bool listen_stop;
  /* Wakes the listener out of its poll: at close, and when a leadership is first
   * asked for, so neither waits out PROBE_MS (a stop or a start would pay it). */
  int listen_wake;
  pthread_rwlock_t listen_lock; /* listeners: dispatch reads, (un)listen writes */
  listener_t listeners[MAX_LISTENERS];
  int nlisteners;
  leader_t leaders[MAX_LEADERS];
  atomic_int nleaders;
  atomic_int writer_pid; /* the writer's server process: notifications from it are ours */
  /* Instances share a database but not always a schema (a schema per tenant, or per
   * test): the order lock, the leaderships and the NOTIFY channel are per schema, a
   * hash of current_schema() taken at open. */
  int scope;
  char channel[24]; /* "iotfin_<scope in hex>" */
  char begin[128];  /* BEGIN with the order lock of this scope */
} pg_store_t;

/* ---- helpers the unit tests reach through store_internal.h ---- */

int store__pg_rewrite(const char *sql, char **out) {
  size_t len = strlen(sql);
  /* "$NN" is at most 3 bytes longer than "?" for 999 parameters; plenty. */
  char *o = malloc(len * 4 + 1);
  if (!o) return -1;
  size_t w = 0;
  int n = 0;
  char quote = 0;
  for (size_t i = 0; i < len; i++) {
    char c = sql[i];
    if (quote) {
      if (c == quote) quote = 0; /* '' inside a literal closes and reopens: same result */
      o[w++] = c;
    } else if (c == '\'' || c == '"') {
      quote = c;
      o[w++] = c;
    } else if (c == '-' && sql[i + 1] == '-') {
      while (i < len && sql[i] != '\n')
        o[w++] = sql[i++];
      if (i < len) o[w++] = '\n';
    } else if (c == '?') {
      if (++n > 999) {
        free(o);
        return -1;
      }
      w += (size_t)sprintf(o + w, "$%d", n);
    } else {
      o[w++] = c;
    }
  }
  o[w] = 0;
  *out = o;
  return n;
}

void store__pg_redact(const char *url, char *out, size_t cap) {
  if (!cap) return;
  out[0] = 0;
  size_t w = 0;
#define PUT(ch)                                                                                    \
  do {                                                                                             \
    if (w + 1 < cap) out[w++] = (ch);                                                              \
  } while (0)
  const char *p = url;
  const char *scheme = strstr(url, "://");
  const char *hosts_end = NULL;
  if (scheme) {
    const char *auth = scheme + 3;
    hosts_end = auth + strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *q = auth; q < hosts_end; q++)
      if (*q == '@') at = q;
    for (; p < auth; p++)
      PUT(*p);
    if (at) {
      const char *colon = memchr(auth, ':', (size_t)(at - auth));
      for (; p < (colon ? colon : at); p++)
        PUT(*p);
      if (colon) {
        PUT(':');
        PUT('*');
        PUT('*');
        PUT('*');
      }
      p = at;
    }
  }
  /* The rest, with any password=VALUE parameter masked. */
  while (*p) {
    if ((p == url || p[-1] == '?' || p[-1] == '&' || p[-1] == ' ') &&
        strncmp(p, "password=", 9) == 0) {
      for (const char *s = "password=***"; *s; s++)
        PUT(*s);
      p += 9;
      while (*p && *p != '&' && *p != ' ')
        p++;
      continue;
    }
    PUT(*p);
    p++;
  }
  out[w] = 0;
#undef PUT
}

/* ---- connections ---- */

/* SQLSTATEs that blame the server or the network rather than the statement. */
static const char *server_cause(const char *state) {
  if (!state) return CAUSE_LOST;
  if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0) return CAUSE_LOST;
  if (strcmp(state, "25006") == 0) return CAUSE_READONLY; /* a standby after failover */
  if (strncmp(state, "53", 2) == 0 || strncmp(state, "58", 2) == 0) return CAUSE_FULL;
  if (strncmp(state, "40", 2) == 0) return CAUSE_LOST; /* serialization, deadlock: retry */
  return NULL;
}

static PGconn *pg_connect(pg_store_t *s, bool writer) {
  /* The URL comes last so what it says wins over these defaults. */
  const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
  const char *vals[] = {"3", "iotfin", s->url, NULL};
  PGconn *pg = PQconnectdbParams(keys, vals, 1);
  if (pg && PQstatus(pg) == CONNECTION_OK) {
    /* Durable means on disk before the answer, whatever the server's default. Only
     * the writer holds the order lock, so only its stalls need ending: a reader paused
     * inside its snapshot by a busy machine keeps its session. The statements of the
     * writer are meant to go through an index; the queue's table, though, is empty at one
     * moment and thousands of rows the next, and a plan made while it was small (kept
     * for the session once prepared) read every row, dead ones too, at every claim:
     * so the writer never plans a sequential scan where an index serves. */
    PGresult *r =
        PQexec(pg, writer ? "SET synchronous_commit = on; SET client_min_messages = warning; "
                            "SET idle_in_transaction_session_timeout = '" WRITER_IDLE_TX_TIMEOUT
                            "'; SET enable_seqscan = off"
                          : "SET synchronous_commit = on; SET client_min_messages = warning");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (ok) return pg;
  }
  return pg; /* the caller reads PQstatus and PQerrorMessage */
}

/* The first line of libpq's message, which names host and cause but no password. */
static void first_line(PGconn *pg, char *buf, size_t cap) {
  const char *m = pg ? PQerrorMessage(pg) : "out of memory";
  snprintf(buf, cap, "%s", m && *m ? m : "unknown error");
  buf[strcspn(buf, "\n")] = 0;
}

/* Prepared statements live and die with their server session. */
static void conn_forget_statements(pconn_t *c) {
  for (int i = 0; i < c->nstmts; i++)
    free(c->stmts[i]);
  c->nstmts = 0;
}

static bool conn_usable(pconn_t *c) { return c->pg && PQstatus(c->pg) == CONNECTION_OK; }

/* Reconnects a connection that went bad, at most once per PROBE_MS. */
static bool conn_revive(pconn_t *c) {
  if (conn_usable(c)) return true;
  int64_t now = time_mono_ms();
  if (c->last_reset_ms && now - c->last_reset_ms < PROBE_MS) return false;
  c->last_reset_ms = now;
  if (c->pg) PQfinish(c->pg);
  conn_forget_statements(c);
  c->piped = false;
  c->commit_unread = false;
  c->unread = 0;
  c->pg = pg_connect(c->owner, c == c->owner->writer);
  return conn_usable(c);
}

/* Runs a statement without parameters (BEGIN, SAVEPOINT, DDL). */
static int simple(store_tx_t *tx, const char *sql) {
  PGresult *r = PQexec(tx->conn->pg, sql);
  ExecStatusType st = PQresultStatus(r);
  int rc = 0;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    const char *cause = server_cause(PQresultErrorField(r, PG_DIAG_SQLSTATE));
    if (PQstatus(tx->conn->pg) != CONNECTION_OK) cause = CAUSE_LOST;
    if (cause) {
      tx->cause = cause;
      rc = -ERR_UNAVAILABLE;
    } else {
      log_error("store", "postgres: %s", PQresultErrorMessage(r));
      rc = -ERR_INTERNAL;
    }
    tx->failed = true;
  }
  PQclear(r);
  return rc;
}

/* ---- the writer's pipeline ---- */

/* A statement's own error as an ERR_ code: a unique violation is a conflict, anything
 * else is logged (a bug in our SQL, not the server's state). */
static int sql_error(PGresult *r) {
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  if (state && strcmp(state, "23505") == 0) return -ERR_CONFLICT;
  log_error("store", "postgres: %s", PQresultErrorMessage(r));
  return -ERR_INTERNAL;
}

/* Marks tx failed by result r of a statement of job owner (NULL r: the connection
 * could not send). The first failing job since the last sync point is remembered:
 * everything the server got after it was skipped. */
static void pipe_failed(store_tx_t *tx, PGresult *r, int owner) {
  pconn_t *c = tx->conn;
  tx->failed = true;
  if (PQstatus(c->pg) != CONNECTION_OK || !r) {
    tx->cause = CAUSE_LOST;
    return;
  }
  /* Aborted: an earlier statement of the pipeline failed, and said why already. */
  if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED) {
    if (!tx->cause && c->bad_job < 0) tx->cause = CAUSE_LOST;
    return;
  }
  const char *cause = server_cause(PQresultErrorField(r, PG_DIAG_SQLSTATE));
  if (cause) {
    tx->cause = cause;
    return;
  }
  int rc = sql_error(r);
  if (owner >= 0 && c->bad_job < 0) {
    c->bad_job = owner;
    c->bad_rc = rc;
  }
}

static bool result_ok(PGresult *r) {
  ExecStatusType st = PQresultStatus(r);
  return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

static void pipe_push(pconn_t *c, int owner) {
  c->owners[(c->ohead + c->unread) % UNREAD_MAX] = owner;
  c->unread++;
}

/* The end of the oldest unread statement's answers. */
static void pipe_pop(pconn_t *c) {
  if (c->unread <= 0) return;
  c->ohead = (c->ohead + 1) % UNREAD_MAX;
  c->unread--;
}

static int pipe_oldest(const pconn_t *c) { return c->unread > 0 ? c->owners[c->ohead] : -1; }

/* Reads the answers of the statements sent without waiting; a failed one marks tx.
 * The server must have been asked to send them (a flush request or a sync). */
static void pipe_catch_up(store_tx_t *tx) {
  pconn_t *c = tx->conn;
  while (c->unread > 0) {
    PGresult *r = PQgetResult(c->pg);
    if (!r) { /* the end of one statement's results */
      pipe_pop(c);
      continue;
    }
    if (!result_ok(r) && !tx->cause) pipe_failed(tx, r, pipe_oldest(c));
    PQclear(r);
  }
}

/* Asks for the answers so far and reads them: the pipeline stays within UNREAD_MAX. */
static void pipe_drain(store_tx_t *tx) {
  pconn_t *c = tx->conn;
  if (!PQsendFlushRequest(c->pg) || PQflush(c->pg) != 0) {
    pipe_failed(tx, NULL, -1);
    return;
  }
  pipe_catch_up(tx);
}

/* Sends one statement of tx's job (or of the batch: job -1) without waiting. */
static void pipe_send(store_tx_t *tx, const char *sql) {
  if (tx->cause) return;
  if (tx->conn->unread >= UNREAD_MAX) pipe_drain(tx);
  if (tx->cause) return;
  if (!PQsendQueryParams(tx->conn->pg, sql, 0, NULL, NULL, NULL, NULL, 0)) {
    pipe_failed(tx, NULL, -1);
    return;
  }
  pipe_push(tx->conn, tx->job);
}

/* Ends the pipeline: a sync point, every answer read, back to one statement at a
 * time. A failed statement leaves the server skipping the rest until the sync, so
 * this also makes the connection usable again after one (the transaction stays open,
 * for a ROLLBACK TO or a ROLLBACK). False when the connection is no longer usable. */
static bool pipe_read_to_sync(store_tx_t *tx, bool leave, bool ok);

static bool pipe_sync(store_tx_t *tx, bool leave) {
  pconn_t *c = tx->conn;
  if (!c->piped) return true;
  return pipe_read_to_sync(tx, leave, PQpipelineSync(c->pg) == 1);
}

/* The reading half of pipe_sync, for a sync point sent already (ok: it was). */
static bool pipe_read_to_sync(store_tx_t *tx, bool leave, bool ok) {
  pconn_t *c = tx->conn;
  /* Every statement's results end with a NULL; the sync point ends them all. More
   * NULLs than statements sent means libpq lost its place: never spin on it. */
  for (int nulls = 0; ok;) {
    PGresult *r = PQgetResult(c->pg);
    if (!r) {
      pipe_pop(c);
      if (PQstatus(c->pg) != CONNECTION_OK || ++nulls > BATCH_MAX * 8) ok = false;
      continue;
    }
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      break;
    }
    if (!result_ok(r) && !tx->cause) pipe_failed(tx, r, pipe_oldest(c));
    PQclear(r);
  }
  c->unread = 0;
  c->ohead = 0;
  if (ok && leave) {
    ok = PQexitPipelineMode(c->pg) == 1;
    c->piped = !ok;
  }
  if (!ok) {
    /* Neither in step nor out of the pipeline: start over with a new connection. */
    if (!tx->cause) tx->cause = CAUSE_LOST;
    PQfinish(c->pg);
    c->pg = NULL;
    c->piped = false;
    conn_forget_statements(c);
  }
  return ok;
}

static int take_result(store_tx_t *tx, store_rows_t **rows, PGresult *r);

/* The prepared statement of this connection for types and sql, or -1. */
static int find_statement(const pconn_t *c, const char *sql, const char *types) {
  size_t tl = strlen(types);
  for (int i = 0; i < c->nstmts; i++) {
    const char *k = c->stmts[i];
    if (strncmp(k, types, tl) == 0 && k[tl] == '\x01' && strcmp(k + tl + 1, sql) == 0) return i;
  }
  return -1;
}

/* Converts the caller's values to text for libpq; nt of them, as types names. */
static int bind_values(const char *types, int nt, va_list ap, Oid *oids, const char **vals,
                       char nums[][32]) {
  for (int i = 0; i < nt; i++) {
    switch (types[i]) {
    case 's':
      oids[i] = 25; /* text: also lets `? IS NULL` know its type */
      vals[i] = va_arg(ap, const char *);
      break;
    case 'i':
      oids[i] = 20; /* int8 */
      snprintf(nums[i], 32, "%lld", (long long)va_arg(ap, int64_t));
      vals[i] = nums[i];
      break;
    case 'd':
      oids[i] = 701; /* float8 */
      snprintf(nums[i], 32, "%.17g", va_arg(ap, double));
      vals[i] = nums[i];
      break;
    default:
      log_error("store", "bad bind type '%c'", types[i]);
      return -ERR_INTERNAL;
    }
  }
  return 0;
}

static int pg_exec(store_tx_t *tx, store_rows_t **rows, const char *sql, const char *types,
                   va_list ap) {
  if (rows) *rows = NULL;
  /* PostgreSQL refuses every statement after a failed one until the savepoint is
   * rolled back: say so without a round trip. */
  if (tx->failed) return tx->cause ? -ERR_UNAVAILABLE : -ERR_INTERNAL;
  if (!types) types = "";
  int nt = (int)strlen(types);
  if (nt > MAX_PARAMS) {
    log_error("store", "too many parameters (%d)", nt);
    return -ERR_INTERNAL;
  }
  char *q = NULL;
  int np = store__pg_rewrite(sql, &q);
  if (np < 0) return -ERR_INTERNAL;
  if (np != nt) {
    log_error("store", "statement has %d placeholders but %d bound values", np, nt);
    free(q);
    return -ERR_INTERNAL;
  }
  Oid oids[MAX_PARAMS];
  const char *vals[MAX_PARAMS];
  char nums[MAX_PARAMS][32];
  if (bind_values(types, nt, ap, oids, vals, nums) < 0) {
    free(q);
    return -ERR_INTERNAL;
  }
  /* Parsed and planned once per connection: the server's CPU is the bottleneck of a
   * small write, not the network. */
  pconn_t *c = tx->conn;
  int slot = find_statement(c, sql, types);
  char *key = NULL;
  if (slot < 0 && c->nstmts < STMT_CACHE) {
    size_t klen = (size_t)nt + 1 + strlen(sql) + 1;
    if (!(key = malloc(klen))) {
      free(q);
      return -ERR_INTERNAL;
    }
    snprintf(key, klen, "%s\x01%s", types, sql);
  }
  char name[16];
  PGresult *r = NULL;
  if (c->piped) {
    /* Sent behind whatever is unread, with a flush request: the server answers this
     * statement now instead of at the batch's sync point. */
    bool prep = key != NULL;
    snprintf(name, sizeof(name), "s%d", prep ? c->nstmts : slot);
    bool sent = (!prep || PQsendPrepare(c->pg, name, q, nt, oids)) &&
                (prep || slot >= 0 ? PQsendQueryPrepared(c->pg, name, nt, vals, NULL, NULL, 0)
                                   : PQsendQueryParams(c->pg, q, nt, oids, vals, NULL, NULL, 0)) &&
                PQsendFlushRequest(c->pg) && PQflush(c->pg) == 0;
    free(q);
    if (!sent) {
      free(key);
      pipe_failed(tx, NULL, tx->job);
      return -ERR_UNAVAILABLE;
    }
    pipe_catch_up(tx);
    if (prep) { /* the PREPARE's answer, then its end */
      PGresult *pr = PQgetResult(c->pg);
      bool done = pr && PQresultStatus(pr) == PGRES_COMMAND_OK;
      if (done) {
        c->stmts[c->nstmts++] = key;
        key = NULL;
        PQclear(pr);
      } else {
        r = pr; /* its error stands for the statement's, which the server skipped */
      }
      for (PGresult *x; (x = PQgetResult(c->pg));)
        PQclear(x);
    }
    PGresult *er = PQgetResult(c->pg);
    for (PGresult *x; er && (x = PQgetResult(c->pg));)
      PQclear(x);
    if (r)
      PQclear(er);
    else
      r = er;
    free(key);
    if (!r) {
      pipe_failed(tx, NULL, tx->job);
      return -ERR_UNAVAILABLE;
    }
    if (tx->cause) { /* an earlier statement failed under the server: all in doubt */
      PQclear(r);
      tx->failed = true;
      return -ERR_UNAVAILABLE;
    }
    return take_result(tx, rows, r);
  }
  if (key) {
    snprintf(name, sizeof(name), "s%d", c->nstmts);
    r = PQprepare(c->pg, name, q, nt, oids);
    if (PQresultStatus(r) == PGRES_COMMAND_OK) {
      PQclear(r);
      r = NULL;
      slot = c->nstmts;
      c->stmts[c->nstmts++] = key;
      key = NULL;
    }
  }
  if (!r) {
    if (slot >= 0) {
      snprintf(name, sizeof(name), "s%d", slot);
      r = PQexecPrepared(c->pg, name, nt, vals, NULL, NULL, 0);
    } else {
      r = PQexecParams(c->pg, q, nt, oids, vals, NULL, NULL, 0);
    }
  }
  free(key);
  free(q);
  return take_result(tx, rows, r);
}

/* store_exec_nowait: inside a batch, a prepared statement is sent and left unread;
 * its answer is read with the next statement's or at the next sync point, and a
 * failure is then charged to this job (run_batch undoes it). Its first use on a
 * connection runs as pg_exec does, which prepares it. */
static int pg_exec_nowait(store_tx_t *tx, const char *sql, const char *types, va_list ap) {
  pconn_t *c = tx->conn;
  if (!types) types = "";
  int slot = c->piped && tx->job >= 0 ? find_statement(c, sql, types) : -1;
  if (slot < 0) return pg_exec(tx, NULL, sql, types, ap);
  if (tx->failed) return tx->cause ? -ERR_UNAVAILABLE : -ERR_INTERNAL;
  int nt = (int)strlen(types);
  Oid oids[MAX_PARAMS];
  const char *vals[MAX_PARAMS];
  char nums[MAX_PARAMS][32];
  if (bind_values(types, nt, ap, oids, vals, nums) < 0) return -ERR_INTERNAL;
  if (c->unread >= UNREAD_MAX) pipe_drain(tx);
  if (tx->failed) return tx->cause ? -ERR_UNAVAILABLE : -ERR_INTERNAL;
  char name[16];
  snprintf(name, sizeof(name), "s%d", slot);
  if (!PQsendQueryPrepared(c->pg, name, nt, vals, NULL, NULL, 0)) {
    pipe_failed(tx, NULL, tx->job);
    return -ERR_UNAVAILABLE;
  }
  pipe_push(c, tx->job);
  return 0;
}

/* One statement's answer: its rows, its count, or its error mapped to an ERR_ code
 * (and tx marked failed). Takes r. */
static int take_result(store_tx_t *tx, store_rows_t **rows, PGresult *r) {
  ExecStatusType st = PQresultStatus(r);
  int rc;
  if (st == PGRES_TUPLES_OK) {
    int n = PQntuples(r), ncols = PQnfields(r);
    rc = n;
    if (rows && n > 0) { /* none: *rows stays NULL, as store.h promises (and SQLite does) */
      store_rows_t *out = store__rows_new(ncols);
      const char **cells = malloc(sizeof(char *) * (size_t)(ncols ? ncols : 1));
      if (!out || !cells) rc = -ERR_INTERNAL;
      for (int i = 0; rc >= 0 && i < n; i++) {
        for (int j = 0; j < ncols; j++)
          cells[j] = PQgetisnull(r, i, j) ? NULL : PQgetvalue(r, i, j);
        if (store__rows_add(out, ncols, cells) < 0) rc = -ERR_INTERNAL;
      }
      free(cells);
      if (rc < 0)
        store_rows_free(&out);
      else
        *rows = out;
    }
  } else if (st == PGRES_COMMAND_OK) {
    rc = atoi(PQcmdTuples(r));
  } else if (st == PGRES_PIPELINE_ABORTED) {
    /* Skipped: a statement sent before it (store_exec_nowait) failed, and was read and
     * charged to its job already; run_batch undoes from there. */
    tx->failed = true;
    if (tx->conn->bad_job < 0) tx->cause = CAUSE_LOST;
    rc = -ERR_UNAVAILABLE;
  } else {
    const char *cause = server_cause(PQresultErrorField(r, PG_DIAG_SQLSTATE));
    if (PQstatus(tx->conn->pg) != CONNECTION_OK) cause = CAUSE_LOST;
    tx->failed = true;
    if (cause) {
      /* Not logged here: the writer logs the store's state changes. */
      tx->cause = cause;
      rc = -ERR_UNAVAILABLE;
    } else {
      rc = sql_error(r);
      /* The job sees this one itself: its own return value stands. */
      if (tx->conn->piped && tx->conn->bad_job < 0) {
        tx->conn->bad_job = tx->job;
        tx->conn->bad_rc = 0;
      }
    }
  }
  PQclear(r);
  return rc;
}

/* ---- health ---- */

static void set_health(pg_store_t *s, const char *cause) {
  if (cause) {
    const char *was = atomic_exchange(&s->failure, cause);
    if (!atomic_exchange(&s->failing, true) || was != cause)
      log_error("store", "storage failing (%s); requests answer 503 until it recovers", cause + 21);
  } else if (atomic_exchange(&s->failing, false)) {
    log_info("store", "storage recovered: the database takes writes again");
  }
}

/* One small write tells whether the server takes writes again. */
static void probe(pg_store_t *s) {
  s->last_probe_ms = time_mono_ms();
  if (!conn_revive(s->writer)) {
    set_health(s, CAUSE_LOST);
    return;
  }
  char sql[200];
  snprintf(sql, sizeof(sql),
           "BEGIN; INSERT INTO store_probe (id, at_ms) VALUES (1, %lld) ON CONFLICT (id) DO "
           "UPDATE SET at_ms = EXCLUDED.at_ms; COMMIT",
           (long long)time_now_ms());
  store_tx_t tx = {s->base.ops, s->writer, false, NULL, -1};
  if (simple(&tx, sql) == 0) {
    set_health(s, NULL);
    return;
  }
  if (conn_usable(s->writer))
    simple(&(store_tx_t){s->base.ops, s->writer, false, NULL, -1}, "ROLLBACK");
  set_health(s, tx.cause ? tx.cause : CAUSE_LOST);
}

/* ---- the writer ---- */

static void fail_jobs(job_t *batch) {
  for (job_t *j = batch; j; j = j->next)
    j->rc = -ERR_UNAVAILABLE;
}

/* Gives up the batch's transaction: out of the pipeline, then ROLLBACK. */
static void abandon(pg_store_t *s, store_tx_t *tx) {
  pipe_sync(tx, true);
  if (conn_usable(s->writer))
    simple(&(store_tx_t){s->base.ops, s->writer, false, NULL, -1}, "ROLLBACK");
}

/* Sends the batch's notifications: pipelined, or one at a time after a pipeline. */
static void send_notes(pg_store_t *s, store_tx_t *tx, bool piped) {
  char note[NOTES_CAP];
  for (size_t at = 0; at < s->notes_len;) {
    size_t n = strcspn(s->notes + at, ";");
    snprintf(note, sizeof(note), "%.*s", (int)n, s->notes + at);
    if (piped)
      pipe_send(tx, note);
    else
      simple(tx, note);
    at += n + 1;
  }
}

/* After a statement of job bad_job failed: the server skipped everything sent after
 * it, so jobs bad_job..upto are undone (the caller rolls back to the savepoint, which
 * still stands before bad_job). That job gets its statement's error; the later ones,
 * innocent, get -ERR_UNAVAILABLE, which their callers answer as a retry. */
static void undo_from(pg_store_t *s, int upto) {
  pconn_t *c = s->writer;
  int from = c->bad_job;
  for (int k = from; k <= upto; k++) {
    job_t *j = s->jobs[k];
    if (k > from) {
      j->rc = -ERR_UNAVAILABLE;
    } else if (c->bad_rc) {
      j->rc = c->bad_rc;
    } else if (j->rc >= 0) {
      log_error("store", "a transaction went on after a failed statement; undone");
      j->rc = -ERR_INTERNAL;
    }
  }
  if (upto > from)
    log_warn("store", "%d transaction(s) of the same commit undone behind a failed statement",
             upto - from);
  s->notes_len = s->notes_at[from]; /* undone: nothing to tell */
  c->bad_job = -1;
  c->bad_rc = 0;
}

/* Runs one batch in one transaction; returns NULL when it committed, else the cause
 * to report (or NULL with every job failed for a reason of its own SQL). */
static const char *run_batch(pg_store_t *s, job_t *batch, bool *committed) {
  if (!conn_revive(s->writer)) {
    fail_jobs(batch);
    return CAUSE_LOST;
  }
  pconn_t *c = s->writer;
  store_tx_t tx = {s->base.ops, c, false, NULL, -1};
  /* As for readers: a connection dropped while idle is retried once, before any job
   * ran. BEGIN waits for its answer: it takes the order lock. */
  const char *begin = s->begin;
  if (simple(&tx, begin) < 0 && tx.cause && (c->last_reset_ms = 0, conn_revive(c))) {
    tx = (store_tx_t){s->base.ops, c, false, NULL, -1};
    simple(&tx, begin);
  }
  atomic_store(&s->writer_pid, PQbackendPID(c->pg));
  s->notes_len = 0;
  if (!tx.failed && PQenterPipelineMode(c->pg) != 1) {
    tx.failed = true;
    tx.cause = CAUSE_LOST;
  }
  if (tx.failed) {
    fail_jobs(batch);
    simple(&(store_tx_t){s->base.ops, c, false, NULL, -1}, "ROLLBACK");
    return tx.cause ? tx.cause : CAUSE_LOST;
  }
  c->piped = true;
  c->unread = 0;
  c->ohead = 0;
  c->bad_job = -1;
  c->bad_rc = 0;
  int idx = 0;
  for (job_t *j = batch; j; j = j->next, idx++) {
    s->jobs[idx] = j;
    s->notes_at[idx] = s->notes_len;
    tx.failed = false;
    tx.job = idx;
    j->rc = j->fn(&tx, j->arg);
    /* A failed statement makes the server skip what follows until a sync point: one
     * now tells which job failed first and lets the transaction go on. */
    if (!tx.cause && (tx.failed || c->bad_job >= 0)) pipe_sync(&tx, false);
    if (tx.cause) {
      /* The connection or the server failed under this job: the whole transaction
       * is in doubt, so every job of the batch fails and none is reported done. */
      fail_jobs(batch);
      abandon(s, &tx);
      return tx.cause;
    }
    if (tx.failed && c->bad_job < 0) { /* said nothing of whose: this job's own */
      c->bad_job = idx;
      c->bad_rc = 0;
    }
    tx.failed = false;
    if (c->bad_job >= 0) {
      undo_from(s, idx);
      pipe_send(&tx, "ROLLBACK TO job");
    } else if (j->rc < 0) {
      s->notes_len = s->notes_at[idx];
      pipe_send(&tx, "ROLLBACK TO job");
    }
    pipe_send(&tx, "RELEASE job");
    if (j->next) {
      pipe_send(&tx, "SAVEPOINT job");
      continue;
    }
    /* The notifications go with the COMMIT: delivered if and when it commits. */
    tx.job = -1;
    send_notes(s, &tx, true);
    pipe_send(&tx, "COMMIT");
  }
  /* Every answer, the COMMIT's last: it committed only if all of them say so. */
  pipe_sync(&tx, true);
  if (!tx.cause && c->bad_job >= 0 && !c->piped) {
    /* A statement left unread in the last jobs failed: the server skipped the rest,
     * the COMMIT too. Undo from that job and commit the jobs before it. */
    undo_from(s, idx - 1);
    tx.failed = false;
    simple(&tx, "ROLLBACK TO job");
    send_notes(s, &tx, false);
    simple(&tx, "COMMIT");
  }
  if (tx.cause || tx.failed) {
    fail_jobs(batch);
    if (conn_usable(c)) simple(&(store_tx_t){s->base.ops, c, false, NULL, -1}, "ROLLBACK");
    return tx.cause ? tx.cause : CAUSE_LOST;
  }
  *committed = true;
  return NULL;
}

static void *writer_main(void *p) {
  pg_store_t *s = p;
  pthread_setname_np(pthread_self(), "store-writer");
  for (;;) {
    pthread_mutex_lock(&s->lock);
    while (!s->queue_head && !s->stopping) {
      if (s->probe_asked) {
        s->probe_asked = false;
        pthread_mutex_unlock(&s->lock);
        probe(s);
        pthread_mutex_lock(&s->lock);
        continue;
      }
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
    const char *cause = run_batch(s, batch, &committed);
    if (committed)
      set_health(s, NULL);
    else if (cause) {
      set_health(s, cause);
      s->last_probe_ms = time_mono_ms();
    }
    if (committed) store__run_commit_hooks(&s->base);
    sem_post(&batch->done);
  }
  return NULL;
}

static int pg_write(store_t *base, store_tx_fn fn, void *arg) {
  pg_store_t *s = (pg_store_t *)base;
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
  /* As in the SQLite backend: each woken caller wakes the next of its batch. */
  if (job.next) sem_post(&job.next->done);
  sem_destroy(&job.done);
  return job.rc;
}

/* ---- readers ---- */

static pconn_t *reader_take(pg_store_t *s) {
  pthread_mutex_lock(&s->lock);
  pconn_t *c = s->idle_readers;
  if (c) {
    s->idle_readers = c->next;
  } else if ((c = calloc(1, sizeof(*c)))) {
    c->owner = s;
    c->all_next = s->all_readers;
    s->all_readers = c;
  }
  pthread_mutex_unlock(&s->lock);
  return c;
}

/* The key's destructor: the thread ended, its connection waits for the next one. */
static void reader_gone(void *p) {
  pconn_t *c = p;
  pg_store_t *s = c->owner;
  pthread_mutex_lock(&s->lock);
  c->next = s->idle_readers;
  s->idle_readers = c;
  pthread_mutex_unlock(&s->lock);
}

static void ask_probe(pg_store_t *s) {
  pthread_mutex_lock(&s->lock);
  s->probe_asked = true;
  pthread_cond_signal(&s->work_cond);
  pthread_mutex_unlock(&s->lock);
}

/* Reads what the last read on c left unread: its COMMIT's answer and the sync point,
 * there by now; then c is out of the pipeline. A read-only transaction's COMMIT can
 * change nothing its reads answered, so only the connection's health depends on it. */
static void reader_catch_up(pconn_t *c) {
  if (!c->commit_unread) return;
  c->commit_unread = false;
  store_tx_t tx = {c->owner->base.ops, c, false, NULL, -1};
  if (!pipe_read_to_sync(&tx, true, true) || tx.failed) {
    PQfinish(c->pg); /* out of step: the next read starts a new connection */
    c->pg = NULL;
    c->piped = false;
    conn_forget_statements(c);
  }
}

static int read_on(pg_store_t *s, pconn_t *c, store_tx_fn fn, void *arg) {
  store_t *base = &s->base;
  reader_catch_up(c);
  if (!conn_revive(c)) {
    if (!atomic_load(&s->failing)) ask_probe(s);
    return -ERR_UNAVAILABLE;
  }
  store_tx_t tx = {base->ops, c, false, NULL, -1};
  const char *begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
  int64_t now = time_mono_ms();
  /* A connection read on within the last second goes down libpq's pipeline: BEGIN is
   * sent with the first statement and answered with it, and the COMMIT is sent and
   * left to be read at the next read, so a read of one statement costs one round trip
   * instead of three. After a pause BEGIN waits for its answer: a connection the
   * server dropped while idle (a restart) shows only then, and since nothing has run
   * yet, one fresh connection may try again. */
  bool warm = c->last_read_ms && now - c->last_read_ms < WARM_MS && conn_usable(c);
  if (warm) {
    if (PQenterPipelineMode(c->pg) != 1) return -ERR_UNAVAILABLE;
    c->piped = true;
    c->unread = 0;
    c->ohead = 0;
    c->bad_job = -1;
    pipe_send(&tx, begin);
  } else if (simple(&tx, begin) < 0 && tx.cause && (c->last_reset_ms = 0, conn_revive(c))) {
    tx = (store_tx_t){base->ops, c, false, NULL, -1};
    simple(&tx, begin);
  }
  if (tx.failed) {
    if (!atomic_load(&s->failing)) ask_probe(s);
    return tx.cause ? -ERR_UNAVAILABLE : -ERR_INTERNAL;
  }
  int rc = fn(&tx, arg);
  bool lost = tx.cause != NULL;
  if (c->piped && !tx.failed && !lost) {
    pipe_send(&tx, "COMMIT");
    if (!tx.cause && PQpipelineSync(c->pg) == 1 && PQflush(c->pg) == 0)
      c->commit_unread = true;
    else
      lost = true;
  } else {
    /* A failed statement: out of the pipeline (the server skipped up to the sync
     * point), then end the transaction, one answer at a time. */
    if (c->piped && !pipe_sync(&tx, true)) lost = true;
    const char *end = tx.failed ? "ROLLBACK" : "COMMIT";
    tx.failed = false;
    if (!lost && simple(&tx, end) < 0 && tx.cause) lost = true;
  }
  c->last_read_ms = time_mono_ms();
  if (lost) {
    /* Whatever fn made of a lost connection, its answer is not to be trusted. */
    c->last_read_ms = 0;
    if (!atomic_load(&s->failing)) ask_probe(s);
    return -ERR_UNAVAILABLE;
  }
  return rc;
}

static int pg_read(store_t *base, store_tx_fn fn, void *arg) {
  pg_store_t *s = (pg_store_t *)base;
  pconn_t *c = pthread_getspecific(s->reader_key);
  if (!c) {
    if (!(c = reader_take(s))) return -ERR_INTERNAL;
    pthread_setspecific(s->reader_key, c);
  }
  return read_on(s, c, fn, arg);
}

static int ping_tx(store_tx_t *tx, void *arg) { return store_exec(tx, NULL, "SELECT 1", ""); }

static int pg_ping(store_t *base) {
  pg_store_t *s = (pg_store_t *)base;
  if (atomic_load(&s->failing)) return -ERR_UNAVAILABLE;
  /* A quiet server may have gone since the last write: ask it. */
  return pg_read(base, ping_tx, NULL) < 0 ? -ERR_UNAVAILABLE : 0;
}

static const char *pg_failure(store_t *base) {
  pg_store_t *s = (pg_store_t *)base;
  return atomic_load(&s->failing) ? atomic_load(&s->failure) : NULL;
}

/* ---- notifications and leadership ---- */

/* FNV-1a: lock keys and channel names from names, stable across builds and hosts. */
static unsigned fnv1a(const char *text) {
  unsigned h = 2166136261u;
  for (; *text; text++)
    h = (h ^ (unsigned char)*text) * 16777619u;
  return h;
}

static int pg_notify(store_tx_t *tx, const char *topic, const char *payload) {
  pg_store_t *s = tx->conn->owner;
  if (tx->conn != s->writer) return -ERR_INTERNAL; /* a read-only snapshot changes nothing */
  char stmt[256];
  /* Characters were checked by store_notify: nothing here needs quoting. */
  snprintf(stmt, sizeof(stmt), "NOTIFY %s, '%s%s%s';", s->channel, topic, payload ? " " : "",
           payload ? payload : "");
  if (s->notes_len && memmem(s->notes, s->notes_len, stmt, strlen(stmt))) return 0;
  size_t n = strlen(stmt);
  char resync[64];
  size_t rn = (size_t)snprintf(resync, sizeof(resync), "NOTIFY %s, 'resync';", s->channel);
  if (s->notes_len + n + rn >= NOTES_CAP) {
    if (!memmem(s->notes, s->notes_len, resync, rn)) {
      memcpy(s->notes + s->notes_len, resync, rn);
      s->notes_len += rn;
    }
    return 0;
  }
  memcpy(s->notes + s->notes_len, stmt, n);
  s->notes_len += n;
  return 0;
}

static void pg_listen(store_t *base, store_listen_fn fn, void *arg) {
  pg_store_t *s = (pg_store_t *)base;
  pthread_rwlock_wrlock(&s->listen_lock);
  if (s->nlisteners < MAX_LISTENERS) s->listeners[s->nlisteners++] = (listener_t){fn, arg};
  pthread_rwlock_unlock(&s->listen_lock);
}

static void pg_unlisten(store_t *base, store_listen_fn fn, void *arg) {
  pg_store_t *s = (pg_store_t *)base;
  pthread_rwlock_wrlock(&s->listen_lock);
  for (int i = 0; i < s->nlisteners; i++)
    if (s->listeners[i].fn == fn && s->listeners[i].arg == arg) {
      s->listeners[i--] = s->listeners[--s->nlisteners];
    }
  pthread_rwlock_unlock(&s->listen_lock);
}

static void wake_listener(pg_store_t *s) {
  if (s->listen_wake >= 0) (void)eventfd_write(s->listen_wake, 1);
}

/* Waits up to ms for the listener's connection (fd, or none when -1) or a wake-up;
 * true when the connection has input. */
static bool listener_wait(pg_store_t *s, int fd, int ms) {
  struct pollfd pfd[2] = {{s->listen_wake, POLLIN, 0}, {fd, POLLIN, 0}};
  if (poll(pfd, fd >= 0 ? 2 : 1, ms) <= 0) return false;
  if (pfd[0].revents & POLLIN) {
    eventfd_t v;
    (void)eventfd_read(s->listen_wake, &v);
  }
  return fd >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR));
}

static int pg_leader(store_t *base, const char *name) {
  pg_store_t *s = (pg_store_t *)base;
  int n = atomic_load(&s->nleaders);
  for (int i = 0; i < n; i++)
    if (strcmp(s->leaders[i].name, name) == 0) return atomic_load(&s->leaders[i].held);
  pthread_mutex_lock(&s->lock);
  n = atomic_load(&s->nleaders);
  if (n < MAX_LEADERS) {
    leader_t *l = &s->leaders[n];
    snprintf(l->name, sizeof(l->name), "%s", name);
    /* A hash of the name, in a range of its own (high byte 0x4c: "L"); the second
     * key is the schema's. */
    l->key = (int)((fnv1a(name) & 0x00ffffffu) | 0x4c000000u);
    atomic_store(&l->held, false);
    atomic_store(&s->nleaders, n + 1);
    wake_listener(s);
  }
  pthread_mutex_unlock(&s->lock);
  return 0;
}

static void dispatch(pg_store_t *s, const char *topic, const char *payload, bool self) {
  pthread_rwlock_rdlock(&s->listen_lock);
  for (int i = 0; i < s->nlisteners; i++)
    s->listeners[i].fn(topic, payload, self, s->listeners[i].arg);
  pthread_rwlock_unlock(&s->listen_lock);
}

static void lose_leaderships(pg_store_t *s) {
  int n = atomic_load(&s->nleaders);
  for (int i = 0; i < n; i++)
    if (atomic_exchange(&s->leaders[i].held, false))
      log_warn("store", "lost the %s leadership with the database connection", s->leaders[i].name);
}

/* The listener: its own connection LISTENs, holds the leadership locks (session
 * locks, so they go with the connection, also when this process dies) and hands
 * each notification to the listeners. Reconnects every PROBE_MS while the server
 * is away, and says "resync" once back. */
static void *listen_main(void *p) {
  pg_store_t *s = p;
  pthread_setname_np(pthread_self(), "store-listen");
  PGconn *pg = NULL;
  bool had = false;
  char listen_sql[48];
  snprintf(listen_sql, sizeof(listen_sql), "LISTEN %s", s->channel);
  while (!atomic_load(&s->listen_stop)) {
    if (!pg || PQstatus(pg) != CONNECTION_OK) {
      if (pg) {
        PQfinish(pg);
        pg = NULL;
        lose_leaderships(s);
      }
      pg = pg_connect(s, false);
      PGresult *r = pg && PQstatus(pg) == CONNECTION_OK ? PQexec(pg, listen_sql) : NULL;
      bool ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
      PQclear(r);
      if (!ok) {
        if (pg) PQfinish(pg);
        pg = NULL;
        listener_wait(s, -1, PROBE_MS);
        continue;
      }
      if (had) dispatch(s, "resync", NULL, false);
      had = true;
    }
    int nl = atomic_load(&s->nleaders);
    for (int i = 0; i < nl; i++) {
      leader_t *l = &s->leaders[i];
      if (atomic_load(&l->held)) continue;
      char sql[80];
      snprintf(sql, sizeof(sql), "SELECT pg_try_advisory_lock(%d, %d)", l->key, s->scope);
      PGresult *r = PQexec(pg, sql);
      if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
          strcmp(PQgetvalue(r, 0, 0), "t") == 0) {
        atomic_store(&l->held, true);
        log_info("store", "this instance now leads %s", l->name);
      }
      PQclear(r);
    }
    int fd = PQsocket(pg);
    if (fd < 0 || !listener_wait(s, fd, PROBE_MS)) continue;
    if (!PQconsumeInput(pg)) continue; /* PQstatus now says the connection is bad */
    PGnotify *note;
    int self = atomic_load(&s->writer_pid);
    while ((note = PQnotifies(pg))) {
      char buf[200];
      snprintf(buf, sizeof(buf), "%s", note->extra ? note->extra : "");
      char *sp = strchr(buf, ' ');
      if (sp) *sp++ = 0;
      dispatch(s, buf, sp, note->be_pid == self);
      PQfreemem(note);
    }
  }
  if (pg) PQfinish(pg);
  return NULL;
}

/* ---- opening ---- */

/* A search_path naming a schema that does not exist yet (a new tenant's, a test's)
 * gets it created, as the tables in it are: the operator names it once, in IOTFIN_DB.
 * Only its first entry, and only when no entry exists (PostgreSQL would otherwise put
 * the tables in the next one it finds, or refuse them). */
static int create_schema(pg_store_t *s, store_tx_t *tx) {
  store_rows_t *rows = NULL;
  if (store_exec(
          tx, &rows,
          "SELECT (current_schema() IS NULL)::int, current_setting('search_path'), current_user",
          "") < 0)
    return -ERR_UNAVAILABLE;
  int rc = 0;
  const char *path = store_rows_text(rows, 0, 1), *user = store_rows_text(rows, 0, 2);
  if (store_rows_int(rows, 0, 0) && path && user) {
    char first[128];
    size_t n = strcspn(path, ",");
    while (n && path[n - 1] == ' ')
      n--;
    snprintf(first, sizeof(first), "%.*s", (int)n, path);
    size_t len = strlen(first);
    const char *name = first;
    if (strcmp(first, "\"$user\"") == 0 || strcmp(first, "$user") == 0) {
      name = user;
    } else if (len >= 2 && first[0] == '"' && first[len - 1] == '"') {
      first[len - 1] = 0; /* quoted: taken as written (a doubled quote stays doubled) */
      name = first + 1;
    }
    char *ident = name[0] ? PQescapeIdentifier(s->writer->pg, name, strlen(name)) : NULL;
    if (ident) {
      char sql[300];
      snprintf(sql, sizeof(sql), "CREATE SCHEMA IF NOT EXISTS %s", ident);
      rc = simple(tx, sql);
      if (rc == 0)
        log_info("store", "created the schema %s named by IOTFIN_DB's search_path", ident);
      PQfreemem(ident);
    }
  }
  store_rows_free(&rows);
  return rc < 0 ? -ERR_UNAVAILABLE : 0;
}

static int migrate(pg_store_t *s) {
  store_tx_t tx = {s->base.ops, s->writer, false, NULL, -1};
  /* Several instances may start at once: one migrates, the others wait for it and
   * then find nothing left to do. The lock is the session's, freed on disconnect. */
  char lock[120];
  snprintf(lock, sizeof(lock), "SELECT pg_advisory_lock(%lld)", MIGRATION_LOCK_KEY);
  if (simple(&tx, lock) < 0) return -ERR_UNAVAILABLE;
  int rc = create_schema(s, &tx);
  if (rc == 0)
    rc = simple(&tx, "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY "
                     "KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL);"
                     "CREATE TABLE IF NOT EXISTS store_probe (id INTEGER PRIMARY KEY, at_ms "
                     "BIGINT NOT NULL)");
  int64_t known = 0, have = 0;
  for (int i = 0; i < store_migrations_count; i++)
    if (store_migrations[i].version > known) known = store_migrations[i].version;
  store_rows_t *rows = NULL;
  if (rc == 0 &&
      store_exec(&tx, &rows, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", "") > 0)
    have = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  if (rc == 0 && have > known) {
    log_error("store",
              "the database %s has schema version %lld, newer than this iotfin %s knows (%lld); "
              "run a newer iotfin, or restore a backup taken before the upgrade",
              s->redacted, (long long)have, IOTFIN_VERSION, (long long)known);
    rc = -ERR_CONFLICT;
  }
  for (int i = 0; rc == 0 && i < store_migrations_count; i++) {
    const store_migration_t *m = &store_migrations[i];
    if (m->dialect[0] && strcmp(m->dialect, "pg") != 0) continue;
    int n = store_exec(&tx, NULL, "SELECT 1 FROM schema_migrations WHERE version = ?", "i",
                       (int64_t)m->version);
    if (n < 0) {
      rc = -ERR_UNAVAILABLE;
      break;
    }
    if (n > 0) continue;
    if (simple(&tx, "BEGIN") < 0 || simple(&tx, m->sql) < 0 ||
        store_exec(&tx, NULL,
                   "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, "
                   "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))",
                   "is", (int64_t)m->version, m->name) < 0 ||
        simple(&tx, "COMMIT") < 0) {
      tx.failed = false;
      simple(&tx, "ROLLBACK");
      log_error("store", "migration %d_%s failed", m->version, m->name);
      rc = -ERR_UNAVAILABLE;
      break;
    }
    log_info("store", "applied migration %03d_%s", m->version, m->name);
  }
  tx.failed = false;
  snprintf(lock, sizeof(lock), "SELECT pg_advisory_unlock(%lld)", MIGRATION_LOCK_KEY);
  simple(&tx, lock);
  return rc;
}

static void pg_close(store_t *base);

/* The schema this URL works in (search_path), as the scope of locks and NOTIFY. */
static int find_scope(pg_store_t *s) {
  PGresult *r = PQexec(s->writer->pg, "SELECT current_schema()");
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
  unsigned h = fnv1a(ok ? PQgetvalue(r, 0, 0) : "");
  PQclear(r);
  if (!ok) return -ERR_UNAVAILABLE;
  s->scope = (int)(h & 0x7fffffffu);
  snprintf(s->channel, sizeof(s->channel), "iotfin_%08x", (unsigned)s->scope);
  snprintf(s->begin, sizeof(s->begin), "BEGIN; SELECT pg_advisory_xact_lock(%d, %d); SAVEPOINT job",
           ORDER_LOCK_CLASS, s->scope);
  return 0;
}

int store__pg_open(const char *url, int wait_s, store_t **out) {
  pg_store_t *s = calloc(1, sizeof(*s));
  if (!s) return -ERR_INTERNAL;
  store__base_init(&s->base, &store__pg_ops);
  s->url = strdup(url);
  store__pg_redact(url, s->redacted, sizeof(s->redacted));
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->work_cond, NULL);
  pthread_rwlock_init(&s->listen_lock, NULL);
  pthread_key_create(&s->reader_key, reader_gone);
  s->listen_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  s->writer = calloc(1, sizeof(*s->writer));
  if (!s->url || !s->writer || s->listen_wake < 0) {
    pg_close(&s->base);
    return -ERR_INTERNAL;
  }
  s->writer->owner = s;
  /* A database that is still starting (a container, a failover) gets wait_s. */
  int64_t deadline = time_mono_ms() + (int64_t)wait_s * 1000;
  bool said = false;
  for (;;) {
    s->writer->pg = pg_connect(s, true);
    if (conn_usable(s->writer)) break;
    if (time_mono_ms() >= deadline) {
      char why[300];
      first_line(s->writer->pg, why, sizeof(why));
      log_error("store",
                "cannot reach the database named by IOTFIN_DB (%s) within %d s "
                "(IOTFIN_DB_WAIT_S): %s",
                s->redacted, wait_s, why);
      pg_close(&s->base);
      return -ERR_UNAVAILABLE;
    }
    if (!said) {
      log_info("store", "waiting up to %d s for the database %s", wait_s, s->redacted);
      said = true;
    }
    PQfinish(s->writer->pg);
    s->writer->pg = NULL;
    usleep(250 * 1000);
  }
  int rc = migrate(s);
  if (rc == 0) rc = find_scope(s);
  if (rc == 0 && pthread_create(&s->writer_thread, NULL, writer_main, s) != 0) rc = -ERR_INTERNAL;
  if (rc < 0) {
    if (rc == -ERR_UNAVAILABLE) log_error("store", "cannot prepare the database %s", s->redacted);
    pg_close(&s->base);
    return rc;
  }
  s->writer_thread_started = true;
  if (pthread_create(&s->listen_thread, NULL, listen_main, s) == 0) s->listen_thread_started = true;
  log_info("store", "postgres %s, server %d", s->redacted, PQserverVersion(s->writer->pg));
  *out = &s->base;
  return 0;
}

static void pg_close(store_t *base) {
  pg_store_t *s = (pg_store_t *)base;
  if (s->listen_thread_started) {
    atomic_store(&s->listen_stop, true);
    wake_listener(s);
    pthread_join(s->listen_thread, NULL);
  }
  if (s->writer_thread_started) {
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->work_cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->writer_thread, NULL);
  }
  if (s->writer) {
    if (s->writer->pg) PQfinish(s->writer->pg);
    conn_forget_statements(s->writer);
    free(s->writer);
  }
  pthread_key_delete(s->reader_key);
  for (pconn_t *c = s->all_readers, *next; c; c = next) {
    next = c->all_next;
    if (c->pg) PQfinish(c->pg);
    conn_forget_statements(c);
    free(c);
  }
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->work_cond);
  pthread_rwlock_destroy(&s->listen_lock);
  if (s->listen_wake >= 0) close(s->listen_wake);
  store__base_free(&s->base);
  free(s->url);
  free(s);
}

const store_ops_t store__pg_ops = {
    .name = "postgres",
    .open = NULL, /* store.c calls store__pg_open: it needs the start-up wait */
    .close = pg_close,
    .write = pg_write,
    .read = pg_read,
    .exec = pg_exec,
    .exec_nowait = pg_exec_nowait,
    .ping = pg_ping,
    .failure = pg_failure,
    .notify = pg_notify,
    .listen = pg_listen,
    .unlisten = pg_unlisten,
    .leader = pg_leader,
};
