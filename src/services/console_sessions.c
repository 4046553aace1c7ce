/* The console's sessions (see console_sessions.h): rows in the store, keyed by a
 * BLAKE2b hash of the session id, with a small per-process memory of sessions
 * checked within the last CONSOLE_RECHECK_MS so that a console's stream and its
 * requests do not read the table each time. */
#include "services/console_sessions.h"

#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "core/errors.h"

typedef struct {
  char hash[65]; /* "" : a free slot */
  char csrf[CONSOLE_SECRET_LEN + 1];
  int64_t expires_ms, checked_ms;
} memo_t;

/* memo_lock guards memo and memo_gen. memo_gen counts sign-outs: a check that read
 * its row before a sign-out committed must not put the session back after it. */
static pthread_mutex_t memo_lock = PTHREAD_MUTEX_INITIALIZER;
static memo_t memo[CONSOLE_SESSIONS_MAX];
static uint64_t memo_gen;

static uint64_t memo_generation(void) {
  pthread_mutex_lock(&memo_lock);
  uint64_t g = memo_gen;
  pthread_mutex_unlock(&memo_lock);
  return g;
}

static void random_hex(char *out) {
  unsigned char b[CONSOLE_SECRET_LEN / 2];
  randombytes_buf(b, sizeof(b));
  sodium_bin2hex(out, CONSOLE_SECRET_LEN + 1, b, sizeof(b));
}

static bool hash_sid(const char *sid, char hex[65]) {
  if (!sid || strlen(sid) != CONSOLE_SECRET_LEN) return false;
  unsigned char h[32];
  crypto_generichash(h, sizeof(h), (const unsigned char *)sid, CONSOLE_SECRET_LEN, NULL, 0);
  sodium_bin2hex(hex, 65, h, sizeof(h));
  return true;
}

/* Remembers a session read from the store, unless a sign-out came since gen was taken. */
static void memo_put(const char *hash, const char *csrf, int64_t expires_ms, int64_t now_ms,
                     uint64_t gen) {
  pthread_mutex_lock(&memo_lock);
  if (gen != memo_gen) {
    pthread_mutex_unlock(&memo_lock);
    return;
  }
  memo_t *pick = &memo[0];
  for (int i = 0; i < CONSOLE_SESSIONS_MAX; i++) {
    if (strcmp(memo[i].hash, hash) == 0 || !memo[i].hash[0]) {
      pick = &memo[i];
      break;
    }
    if (memo[i].checked_ms < pick->checked_ms) pick = &memo[i];
  }
  snprintf(pick->hash, sizeof(pick->hash), "%s", hash);
  memcpy(pick->csrf, csrf, CONSOLE_SECRET_LEN + 1);
  pick->expires_ms = expires_ms;
  pick->checked_ms = now_ms;
  pthread_mutex_unlock(&memo_lock);
}

static void memo_forget(const char *hash) {
  pthread_mutex_lock(&memo_lock);
  memo_gen++;
  for (int i = 0; i < CONSOLE_SESSIONS_MAX; i++)
    if (strcmp(memo[i].hash, hash) == 0) sodium_memzero(&memo[i], sizeof(memo[i]));
  pthread_mutex_unlock(&memo_lock);
}

/* 1 and the session when memo holds it, checked recently and unexpired; else 0. */
static int memo_get(const char *hash, int64_t now_ms, char *csrf, int64_t *expires_ms) {
  int hit = 0;
  pthread_mutex_lock(&memo_lock);
  for (int i = 0; i < CONSOLE_SESSIONS_MAX && !hit; i++) {
    memo_t *m = &memo[i];
    if (strcmp(m->hash, hash) != 0) continue;
    if (now_ms >= m->expires_ms || now_ms - m->checked_ms >= CONSOLE_RECHECK_MS ||
        now_ms < m->checked_ms)
      break;
    if (csrf) memcpy(csrf, m->csrf, CONSOLE_SECRET_LEN + 1);
    if (expires_ms) *expires_ms = m->expires_ms;
    hit = 1;
  }
  pthread_mutex_unlock(&memo_lock);
  return hit;
}

typedef struct {
  const char *hash, *csrf;
  int64_t now_ms, expires_ms;
  char found_csrf[CONSOLE_SECRET_LEN + 1];
} row_t;

static int create_tx(store_tx_t *tx, void *arg) {
  row_t *r = arg;
  int rc = store_exec(tx, NULL,
                      "INSERT INTO console_sessions (sid_hash, csrf, created_at_ms, expires_at_ms) "
                      "VALUES (?, ?, ?, ?)",
                      "ssii", r->hash, r->csrf, r->now_ms, r->expires_ms);
  if (rc < 0) return rc;
  /* Bounded: expired sessions go, and past CONSOLE_SESSIONS_MAX the oldest. */
  rc = store_exec(tx, NULL,
                  "DELETE FROM console_sessions WHERE expires_at_ms <= ? OR created_at_ms < "
                  "(SELECT MIN(created_at_ms) FROM (SELECT created_at_ms FROM console_sessions "
                  "ORDER BY created_at_ms DESC LIMIT ?) newest)",
                  "ii", r->now_ms, (int64_t)CONSOLE_SESSIONS_MAX);
  return rc < 0 ? rc : 0;
}

int console_sessions_create(store_t *store, int64_t now_ms, char *sid, char *csrf,
                            int64_t *expires_ms) {
  char hash[65];
  random_hex(sid);
  random_hex(csrf);
  hash_sid(sid, hash);
  row_t r = {hash, csrf, now_ms, now_ms + CONSOLE_SESSION_TTL_MS, ""};
  int rc = store_write(store, create_tx, &r);
  if (rc < 0) return rc;
  *expires_ms = r.expires_ms;
  memo_put(hash, csrf, r.expires_ms, now_ms, memo_generation());
  return 0;
}

static int check_tx(store_tx_t *tx, void *arg) {
  row_t *r = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT csrf, expires_at_ms FROM console_sessions WHERE sid_hash = ? AND "
                     "expires_at_ms > ?",
                     "si", r->hash, r->now_ms);
  if (n <= 0) return n < 0 ? n : -ERR_UNAUTHENTICATED;
  snprintf(r->found_csrf, sizeof(r->found_csrf), "%s", store_rows_text(rows, 0, 0));
  r->expires_ms = store_rows_int(rows, 0, 1);
  store_rows_free(&rows);
  return 0;
}

int console_sessions_check(store_t *store, const char *sid, int64_t now_ms, char *csrf,
                           int64_t *expires_ms) {
  char hash[65];
  if (!hash_sid(sid, hash)) return -ERR_UNAUTHENTICATED;
  if (memo_get(hash, now_ms, csrf, expires_ms)) return 0;
  uint64_t gen = memo_generation();
  row_t r = {hash, NULL, now_ms, 0, ""};
  int rc = store_read(store, check_tx, &r);
  if (rc < 0) {
    if (rc == -ERR_UNAUTHENTICATED) memo_forget(hash);
    return rc == -ERR_UNAUTHENTICATED || rc == -ERR_UNAVAILABLE ? rc : -ERR_UNAUTHENTICATED;
  }
  memo_put(hash, r.found_csrf, r.expires_ms, now_ms, gen);
  if (csrf) memcpy(csrf, r.found_csrf, CONSOLE_SECRET_LEN + 1);
  if (expires_ms) *expires_ms = r.expires_ms;
  return 0;
}

static int delete_tx(store_tx_t *tx, void *arg) {
  return store_exec(tx, NULL, "DELETE FROM console_sessions WHERE sid_hash = ?", "s",
                    (const char *)arg);
}

int console_sessions_delete(store_t *store, const char *sid) {
  char hash[65];
  if (!hash_sid(sid, hash)) return 0;
  /* Forgotten before the delete and again after its commit: a check on another thread
   * that read the row in between finds memo_gen moved and does not remember it. */
  memo_forget(hash);
  int rc = store_write(store, delete_tx, hash);
  memo_forget(hash);
  return rc < 0 ? rc : 0;
}
