/* Backend dispatch and the result-set helpers both backends share. */
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/log.h"
#include "store/store_internal.h"

int store_open(const char *url, store_t **out) { return store_open_wait(url, 0, out); }

int store_open_wait(const char *url, int wait_s, store_t **out) {
  *out = NULL;
  if (strncmp(url, "sqlite:", 7) == 0) return store__sqlite_ops.open(url + 7, out);
  /* The whole URL goes to libpq, which reads both schemes and multi-host lists. */
  if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0)
    return store__pg_open(url, wait_s, out);
  log_error("store", "unsupported database URL scheme (sqlite: or postgres://)");
  return -ERR_UNAVAILABLE;
}

void store_close(store_t **s) {
  if (!*s) return;
  (*s)->ops->close(*s);
  *s = NULL;
}

int store_write(store_t *s, store_tx_fn fn, void *arg) { return s->ops->write(s, fn, arg); }
int store_read(store_t *s, store_tx_fn fn, void *arg) { return s->ops->read(s, fn, arg); }
int store_ping(store_t *s) { return s->ops->ping(s); }
const char *store_failure(store_t *s) { return s && s->ops->failure ? s->ops->failure(s) : NULL; }
const char *store_backend(const store_t *s) { return s->ops->name; }
void store_redact_url(const char *url, char *out, size_t cap) { store__pg_redact(url, out, cap); }

void store__base_init(struct store *base, const store_ops_t *ops) {
  base->ops = ops;
  pthread_rwlock_init(&base->hooks.lock, NULL);
  base->hooks.n = 0;
}

void store__base_free(struct store *base) { pthread_rwlock_destroy(&base->hooks.lock); }

void store__run_commit_hooks(struct store *base) {
  store_hooks_t *k = &base->hooks;
  pthread_rwlock_rdlock(&k->lock);
  for (int i = 0; i < k->n; i++)
    k->h[i].fn(k->h[i].arg);
  pthread_rwlock_unlock(&k->lock);
}

int store_add_commit_hook(store_t *s, void (*hook)(void *arg), void *arg) {
  store_hooks_t *k = &s->hooks;
  pthread_rwlock_wrlock(&k->lock);
  int rc = k->n < STORE_HOOKS_MAX ? 0 : -ERR_INTERNAL;
  if (rc == 0) {
    k->h[k->n].fn = hook;
    k->h[k->n++].arg = arg;
  }
  pthread_rwlock_unlock(&k->lock);
  return rc;
}

void store_remove_commit_hook(store_t *s, void (*hook)(void *arg), void *arg) {
  store_hooks_t *k = &s->hooks;
  pthread_rwlock_wrlock(&k->lock);
  for (int i = 0; i < k->n; i++)
    if (k->h[i].fn == hook && k->h[i].arg == arg) {
      k->h[i] = k->h[--k->n];
      break;
    }
  pthread_rwlock_unlock(&k->lock);
}

void store_listen(store_t *s, store_listen_fn fn, void *arg) {
  if (s->ops->listen) s->ops->listen(s, fn, arg);
}

void store_unlisten(store_t *s, store_listen_fn fn, void *arg) {
  if (s->ops->unlisten) s->ops->unlisten(s, fn, arg);
}

int store_leader(store_t *s, const char *name) {
  return s->ops->leader ? s->ops->leader(s, name) : 1;
}

/* The transaction knows its backend through its first member, like store_t. */
struct store_tx {
  const store_ops_t *ops;
};

int store_exec(store_tx_t *tx, store_rows_t **rows, const char *sql, const char *types, ...) {
  va_list ap;
  va_start(ap, types);
  int rc = tx->ops->exec(tx, rows, sql, types, ap);
  va_end(ap);
  return rc;
}

int store_exec_nowait(store_tx_t *tx, const char *sql, const char *types, ...) {
  va_list ap;
  va_start(ap, types);
  int rc = tx->ops->exec_nowait ? tx->ops->exec_nowait(tx, sql, types, ap)
                                : tx->ops->exec(tx, NULL, sql, types, ap);
  va_end(ap);
  return rc < 0 ? rc : 0;
}

int64_t store_last_rowid(store_tx_t *tx) {
  return tx->ops->last_rowid ? tx->ops->last_rowid(tx) : -1;
}

bool store_tx_sole_writer(const store_tx_t *tx) { return strcmp(tx->ops->name, "sqlite") == 0; }

bool store_tx_writing_ctes(const store_tx_t *tx) { return strcmp(tx->ops->name, "postgres") == 0; }

bool store__notify_text_ok(const char *s, size_t max) {
  if (!s) return true;
  size_t n = strlen(s);
  return n <= max &&
         strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-") == n;
}

int store_notify(store_tx_t *tx, const char *topic, const char *payload) {
  /* Checked on both backends, so a caller's mistake shows on SQLite too. */
  if (!topic || !*topic || !store__notify_text_ok(topic, 32) ||
      !store__notify_text_ok(payload, 128))
    return -ERR_INTERNAL;
  return tx->ops->notify ? tx->ops->notify(tx, topic, payload) : 0;
}

store_rows_t *store__rows_new(int ncols) {
  store_rows_t *r = calloc(1, sizeof(*r));
  if (r) r->ncols = ncols;
  return r;
}

int store__rows_add(store_rows_t *r, int ncols, const char *const *cells) {
  if (r->nrows == r->cap) {
    int cap = r->cap ? r->cap * 2 : 8;
    char **c = realloc(r->cells, sizeof(char *) * (size_t)cap * (size_t)ncols);
    if (!c) return -ERR_INTERNAL;
    r->cells = c;
    char **b = realloc(r->blocks, sizeof(char *) * (size_t)cap);
    if (!b) return -ERR_INTERNAL;
    r->blocks = b;
    r->cap = cap;
  }
  /* One allocation a row, not one a cell: a device row has ten cells. */
  size_t total = 1;
  for (int i = 0; i < ncols; i++)
    total += cells[i] ? strlen(cells[i]) + 1 : 0;
  char *block = malloc(total), *at = block;
  if (!block) return -ERR_INTERNAL;
  char **row = r->cells + (size_t)r->nrows * (size_t)ncols;
  for (int i = 0; i < ncols; i++) {
    row[i] = NULL;
    if (!cells[i]) continue;
    size_t n = strlen(cells[i]) + 1;
    row[i] = memcpy(at, cells[i], n);
    at += n;
  }
  r->blocks[r->nrows++] = block;
  return 0;
}

int store_rows_count(const store_rows_t *r) { return r ? r->nrows : 0; }

const char *store_rows_text(const store_rows_t *r, int row, int col) {
  if (!r || row < 0 || row >= r->nrows || col < 0 || col >= r->ncols) return NULL;
  return r->cells[row * r->ncols + col];
}

int64_t store_rows_int(const store_rows_t *r, int row, int col) {
  const char *t = store_rows_text(r, row, col);
  return t ? strtoll(t, NULL, 10) : 0;
}

int store_rows_is_null(const store_rows_t *r, int row, int col) {
  return store_rows_text(r, row, col) == NULL;
}

void store_rows_free(store_rows_t **r) {
  if (!*r) return;
  for (int i = 0; i < (*r)->nrows; i++)
    free((*r)->blocks[i]);
  free((*r)->blocks);
  free((*r)->cells);
  free(*r);
  *r = NULL;
}
