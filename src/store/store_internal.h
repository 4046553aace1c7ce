/* What a store backend provides. store.c picks a backend by URL scheme and calls
 * through this table; callers never see which backend they use. */
#ifndef IOTFIN_STORE_INTERNAL_H
#define IOTFIN_STORE_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include "store/store.h"

typedef struct {
  const char *name;
  int (*open)(const char *url, store_t **out);
  void (*close)(store_t *s);
  int (*write)(store_t *s, store_tx_fn fn, void *arg);
  int (*read)(store_t *s, store_tx_fn fn, void *arg);
  int (*exec)(store_tx_t *tx, store_rows_t **rows, const char *sql, const char *types, va_list ap);
  /* Optional (NULL: exec without rows): see store_exec_nowait. */
  int (*exec_nowait)(store_tx_t *tx, const char *sql, const char *types, va_list ap);
  int (*ping)(store_t *s);
  const char *(*failure)(store_t *s);
  /* Optional (NULL on SQLite): see store_notify, store_listen, store_leader. */
  int (*notify)(store_tx_t *tx, const char *topic, const char *payload);
  void (*listen)(store_t *s, store_listen_fn fn, void *arg);
  void (*unlisten)(store_t *s, store_listen_fn fn, void *arg);
  int (*leader)(store_t *s, const char *name);
  /* Optional (NULL on PostgreSQL): see store_last_rowid. */
  int64_t (*last_rowid)(store_tx_t *tx);
} store_ops_t;

#define STORE_HOOKS_MAX 4

/* The commit hooks (store_add_commit_hook); the writer runs them after each commit
 * under the read lock, (un)registering takes the write lock. */
typedef struct {
  pthread_rwlock_t lock;
  int n;
  struct {
    void (*fn)(void *);
    void *arg;
  } h[STORE_HOOKS_MAX];
} store_hooks_t;

/* Every backend's store_t starts with this header; the backend's open calls
 * store__base_init on it and its close store__base_free. */
struct store {
  const store_ops_t *ops;
  store_hooks_t hooks;
};

void store__base_init(struct store *base, const store_ops_t *ops);
void store__base_free(struct store *base);
/* Runs every commit hook; the writer thread, after a commit. */
void store__run_commit_hooks(struct store *base);

/* Rows are materialised as text so that both backends return the same thing. */
struct store_rows {
  int nrows, ncols, cap;
  char **cells;  /* nrows * ncols, NULL for SQL NULL */
  char **blocks; /* nrows: each row's texts, copied in one allocation */
};

/* Appends a row of ncols cells (copied, one allocation a row); 0 or -ERR_INTERNAL. */
int store__rows_add(store_rows_t *r, int ncols, const char *const *cells);
store_rows_t *store__rows_new(int ncols);

/* Whether s (NULL passes) is at most max characters of [A-Za-z0-9._:-]: safe to put
 * between quotes in a NOTIFY. */
bool store__notify_text_ok(const char *s, size_t max);

extern const store_ops_t store__sqlite_ops;
extern const store_ops_t store__pg_ops;

/* PostgreSQL (store_pg.c). Opening waits up to wait_s for the server to answer. */
int store__pg_open(const char *url, int wait_s, store_t **out);
/* Rewrites `?` placeholders outside quotes and comments to $1..$n into *out (free it);
 * returns n, or -1 when out of memory or beyond 999 placeholders. */
int store__pg_rewrite(const char *sql, char **out);
/* Copies url with its password (user:PASS@ or password=PASS) replaced by ***. */
void store__pg_redact(const char *url, char *out, size_t cap);

#endif
