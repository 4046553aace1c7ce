/* Idempotency records in the store. A pending row (status NULL) is written first so
 * that two concurrent requests with one key cannot both run. */
#include "services/idempotency.h"

#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/jsontext.h"
#include "core/log.h"
#include "core/timeutil.h"

#define IDEM_TTL_MS (24LL * 3600 * 1000)

typedef struct {
  const char *principal, *key, *route, *hash;
  int status;
  const char *response;
  idem_replay_t *replay;
  const char *owner;
} idem_t;

static int begin_tx(store_tx_t *tx, void *arg) {
  idem_t *c = arg;
  int64_t now = time_now_ms();
  int rc = store_exec_nowait(tx,
                             "DELETE FROM idempotency WHERE principal = ? AND key = ? AND "
                             "created_at_ms < ?",
                             "ssi", c->principal, c->key, now - IDEM_TTL_MS);
  if (rc < 0) return rc;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT route, body_hash, status, response FROM idempotency "
                     "WHERE principal = ? AND key = ?",
                     "ss", c->principal, c->key);
  if (n < 0) return n;
  if (n == 0) {
    store_rows_free(&rows);
    rc = store_exec(tx, NULL,
                    "INSERT INTO idempotency (principal, key, route, body_hash, created_at_ms, "
                    "owner) VALUES (?, ?, ?, ?, ?, ?)",
                    "ssssis", c->principal, c->key, c->route, c->hash, now, c->owner);
    return rc < 0 ? rc : 0;
  }
  if (strcmp(store_rows_text(rows, 0, 0), c->route) != 0 ||
      strcmp(store_rows_text(rows, 0, 1), c->hash) != 0)
    rc = -ERR_IDEMPOTENCY_KEY_REUSED;
  else if (store_rows_is_null(rows, 0, 2))
    rc = -ERR_CONFLICT;
  else {
    c->replay->status = (int)store_rows_int(rows, 0, 2);
    c->replay->response = strdup(store_rows_text(rows, 0, 3) ? store_rows_text(rows, 0, 3) : "");
    rc = 1;
  }
  store_rows_free(&rows);
  return rc;
}

int idem_begin(app_t *app, const char *principal, const char *key, const char *route,
               const char *body_hash, idem_replay_t *replay) {
  memset(replay, 0, sizeof(*replay));
  idem_t c = {principal, key, route, body_hash, 0, NULL, replay, app->instance_id};
  return store_write(app->store, begin_tx, &c);
}

static int write_answer(store_tx_t *tx, const char *principal, const char *key, int status,
                        const char *response) {
  int rc = store_exec_nowait(tx,
                             "UPDATE idempotency SET status = ?, response = ? WHERE principal = ? "
                             "AND key = ?",
                             "isss", (int64_t)status, response, principal, key);
  return rc < 0 ? rc : 0;
}

static int finish_tx(store_tx_t *tx, void *arg) {
  idem_t *c = arg;
  return write_answer(tx, c->principal, c->key, c->status, c->response);
}

int idem_finish(app_t *app, const char *principal, const char *key, int status,
                const char *response) {
  idem_t c = {principal, key, NULL, NULL, status, response, NULL, NULL};
  return store_write(app->store, finish_tx, &c);
}

int idem_record_tx(store_tx_t *tx, idem_pending_t *p, int status, json_t *body) {
  if (!p) return 0;
  char *text = json_text(body, NULL);
  if (!text) return -ERR_INTERNAL;
  int rc = idem_record_text_tx(tx, p, status, text);
  free(text);
  return rc;
}

int idem_record_text_tx(store_tx_t *tx, idem_pending_t *p, int status, const char *json) {
  if (!p) return 0;
  int rc = write_answer(tx, p->principal, p->key, status, json);
  if (rc < 0) return rc;
  p->status = status;
  return 0;
}

static int abort_tx(store_tx_t *tx, void *arg) {
  idem_t *c = arg;
  int rc = store_exec_nowait(tx, "DELETE FROM idempotency WHERE principal = ? AND key = ?", "ss",
                             c->principal, c->key);
  return rc < 0 ? rc : 0;
}

int idem_abort(app_t *app, const char *principal, const char *key) {
  idem_t c = {principal, key, NULL, NULL, 0, NULL, NULL, NULL};
  return store_write(app->store, abort_tx, &c);
}

static int release_tx(store_tx_t *tx, void *arg) {
  return store_exec(tx, NULL, "DELETE FROM idempotency WHERE owner = ? AND status IS NULL", "s",
                    (const char *)arg);
}

int idem_release_own(app_t *app) {
  /* A retry of such a request runs again. The routes that write their answer with
   * their work (idem_record_tx) left no committed work behind a key still open. */
  int n = store_write(app->store, release_tx, app->instance_id);
  if (n > 0)
    log_warn("idempotency",
             "%d request(s) with an Idempotency-Key were cut off by the last stop "
             "of this instance; their keys may be used again",
             n);
  return n < 0 ? n : 0;
}
