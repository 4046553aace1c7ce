/* The store: iotfin's only way to durable state. Callers write portable SQL with
 * `?` placeholders and run it inside a transaction callback; the backend (SQLite
 * now, PostgreSQL behind the same functions) decides how to run and commit it.
 *
 * Writes are group-committed: store_write() hands its callback to one writer that
 * runs many callbacks in a single transaction (each inside its own savepoint, so
 * one failing callback does not undo the others) and commits them with one fsync.
 * A callback must therefore only touch the database: no I/O, no locks held across
 * the call, no nested store_write(). */
#ifndef IOTFIN_STORE_STORE_H
#define IOTFIN_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct store store_t;
typedef struct store_tx store_tx_t;
typedef struct store_rows store_rows_t;

/* A transaction body. Return >= 0 to commit its work, or -ERR_* to undo it; the
 * value is what store_write()/store_read() return. */
typedef int (*store_tx_fn)(store_tx_t *tx, void *arg);

/* Opens the database named by url (sqlite:<path>, or postgres:// / postgresql://, a
 * libpq URI) and applies pending migrations. Returns 0 and *out (free with
 * store_close), or -ERR_UNAVAILABLE with a log line. store_open_wait retries a
 * PostgreSQL server that does not answer for up to wait_s seconds. */
int store_open(const char *url, store_t **out);
int store_open_wait(const char *url, int wait_s, store_t **out);
/* Stops the writer and closes every connection; sets *s to NULL. */
void store_close(store_t **s);

/* Runs fn in a durable write transaction (see above). Any thread; blocks until the
 * commit is on disk. When the disk refuses the write (full, I/O error, read-only)
 * it returns -ERR_UNAVAILABLE and nothing of fn's work is kept. */
int store_write(store_t *s, store_tx_fn fn, void *arg);
/* Runs fn in a read-only snapshot on the calling thread's own connection. */
int store_read(store_t *s, store_tx_fn fn, void *arg);

/* hook(arg) is called on the writer thread after each successful commit, e.g. to
 * wake workers. It must be quick and must not call store_write(). Up to 4 hooks;
 * returns 0 or -ERR_INTERNAL when they are taken. After store_remove_commit_hook
 * returns, that hook is not running and will not run again. */
int store_add_commit_hook(store_t *s, void (*hook)(void *arg), void *arg);
void store_remove_commit_hook(store_t *s, void (*hook)(void *arg), void *arg);

/* Runs one statement. types names each variadic argument: 's' const char * (NULL
 * binds SQL NULL), 'i' int64_t, 'd' double. When rows is non-NULL the result set is
 * returned in *rows (free with store_rows_free); a query without rows leaves *rows
 * NULL, so callers may return at once when it counts none. Returns the number of changed rows,
 * -ERR_CONFLICT on a unique or primary key violation, -ERR_INTERNAL otherwise. */
int store_exec(store_tx_t *tx, store_rows_t **rows, const char *sql, const char *types, ...);

/* store_exec for a write whose answer the callback does not need (no rows, no count):
 * on PostgreSQL it is sent behind the transaction's other statements without waiting,
 * so a batch of callbacks costs one round trip where it cost one per statement. Returns
 * 0, or an error the transaction already had. Its own failure is learnt later: the
 * callback's work is then undone and store_write() returns that failure (-ERR_CONFLICT,
 * -ERR_UNAVAILABLE or -ERR_INTERNAL) whatever the callback returned, and callbacks
 * committed with it after that statement are undone too and get -ERR_UNAVAILABLE (a
 * retry). So use it only where failing is not expected of the statement (generated
 * keys, rows the transaction holds), never to find a conflict. SQLite runs it at once. */
int store_exec_nowait(store_tx_t *tx, const char *sql, const char *types, ...);

/* The rowid of the row the last INSERT in tx wrote (what an INTEGER PRIMARY KEY
 * column holds), or -1 on a backend without rowids (PostgreSQL: use RETURNING). On
 * SQLite an INSERT ... RETURNING costs nearly twice a plain INSERT (an events row:
 * 54k against 28k instructions, build/bench_returning under callgrind), so hot inserts
 * ask for the rowid instead. */
int64_t store_last_rowid(store_tx_t *tx);

/* Whether tx's writer is the only one the database has (SQLite: one process, one
 * writer thread), so that rows a write transaction has read are still as read when
 * it changes them. PostgreSQL: other instances may change them in between. */
bool store_tx_sole_writer(const store_tx_t *tx);

/* Whether a WITH clause of tx's backend may write (INSERT ... RETURNING in a CTE):
 * PostgreSQL yes, SQLite no. Where each statement is a round trip, one statement
 * that writes two tables saves one. */
bool store_tx_writing_ctes(const store_tx_t *tx);

/* Result access. Text is owned by rows; NULL for SQL NULL or out of range. */
int store_rows_count(const store_rows_t *r);
const char *store_rows_text(const store_rows_t *r, int row, int col);
int64_t store_rows_int(const store_rows_t *r, int row, int col);
int store_rows_is_null(const store_rows_t *r, int row, int col);
void store_rows_free(store_rows_t **r);

/* 0 when the database answers and takes writes, else -ERR_UNAVAILABLE. While
 * writes fail the store probes every 250 ms, so this turns 0 again without traffic. */
int store_ping(store_t *s);
/* While writes fail: a static sentence naming the cause for a problem's detail
 * ("storage unavailable: disk full"); NULL while healthy. Any thread. */
const char *store_failure(store_t *s);
/* --- several instances on one database (CONTRACT section 10) ---------------------
 * Instances share all state through the database; what one caches, another may
 * change. These let them tell each other. On SQLite one process owns the file, so
 * notifications go nowhere and every lock is this process's. */

/* Tells every instance on the database (this one too) of a change, when tx commits;
 * nothing if tx is undone. topic and payload (NULL for none) are short and of the
 * characters [A-Za-z0-9._:-]; identical ones in one commit arrive once. Returns 0, or
 * -ERR_INVALID for characters outside that set. On SQLite: nothing to tell. */
int store_notify(store_tx_t *tx, const char *topic, const char *payload);

/* fn(topic, payload, from_self, arg) runs on the store's listener thread for each
 * notification, and with topic "resync" after the listener lost and found the
 * database again (notifications may have been missed in between: drop caches).
 * from_self: sent by this process. Up to 8 listeners; set them before traffic. */
typedef void (*store_listen_fn)(const char *topic, const char *payload, bool from_self, void *arg);
void store_listen(store_t *s, store_listen_fn fn, void *arg);
/* Removes a listener; when it returns, fn is not running and will not run again. */
void store_unlisten(store_t *s, store_listen_fn fn, void *arg);

/* Whether this process holds the named leadership now (1) or another instance does
 * (0): a PostgreSQL advisory lock held by the listener's connection, tried again
 * every 250 ms while free, and lost with that connection. SQLite: always 1. */
int store_leader(store_t *s, const char *name);

/* Copies a database URL for display into out (cap bytes), its password (user:PASS@,
 * password=PASS) shown as ***. */
void store_redact_url(const char *url, char *out, size_t cap);
/* Name of the backend ("sqlite" or "postgres"), for logs and metrics. */
const char *store_backend(const store_t *s);

#endif
