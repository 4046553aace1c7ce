/* Session records and the tokens they issue. Rows and their events are written in
 * one transaction; tokens are signed after it commits. Refresh tokens are random,
 * stored only as hashes, and rotate on every use. */
#include "services/sessions.h"

#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "services/events.h"

/* A cache of session liveness so that token checks cost no query. Entries are
 * filled on a miss and marked revoked by sessions__revoke() before its transaction
 * commits (a deny can only be early, never late); a revocation on another instance
 * arrives as a "revoke" notification when it commits (sessions_listen). Entries are
 * overwritten when two sessions hash to the same slot. cache_lock guards cache. */
#define CACHE_SLOTS 16384

typedef struct {
  char sid[IDS_UUID_LEN];
  char tier[16];
  int64_t expires_ms;
  bool revoked;
} cached_session_t;

static pthread_rwlock_t cache_lock = PTHREAD_RWLOCK_INITIALIZER;
static cached_session_t cache[CACHE_SLOTS];
/* Bumped by every revocation: a database read that began before a revocation must
 * not put its (possibly stale) answer into the cache. Guarded by cache_lock. */
static uint64_t revoke_gen;

static unsigned slot_of(const char *sid) {
  unsigned h = 2166136261u;
  for (; *sid; sid++)
    h = (h ^ (unsigned char)*sid) * 16777619u;
  return h % CACHE_SLOTS;
}

static uint64_t cache_gen(void) {
  pthread_rwlock_rdlock(&cache_lock);
  uint64_t g = revoke_gen;
  pthread_rwlock_unlock(&cache_lock);
  return g;
}

static void cache_put(const char *sid, const char *tier, int64_t expires_ms, bool revoked,
                      uint64_t gen) {
  if (strlen(sid) >= IDS_UUID_LEN) return;
  pthread_rwlock_wrlock(&cache_lock);
  if (gen != revoke_gen) {
    pthread_rwlock_unlock(&cache_lock);
    return;
  }
  cached_session_t *c = &cache[slot_of(sid)];
  snprintf(c->sid, sizeof(c->sid), "%s", sid);
  snprintf(c->tier, sizeof(c->tier), "%s", tier);
  c->expires_ms = expires_ms;
  c->revoked = revoked;
  pthread_rwlock_unlock(&cache_lock);
}

static void cache_revoke(const char *sid) {
  pthread_rwlock_wrlock(&cache_lock);
  cached_session_t *c = &cache[slot_of(sid)];
  if (strcmp(c->sid, sid) == 0) c->revoked = true;
  revoke_gen++;
  pthread_rwlock_unlock(&cache_lock);
}

/* 1 alive, 0 dead, -1 unknown to the cache. */
static int cache_check(const auth_claims_t *claims, int64_t now) {
  int rc = -1;
  pthread_rwlock_rdlock(&cache_lock);
  cached_session_t *c = &cache[slot_of(claims->sid)];
  if (strcmp(c->sid, claims->sid) == 0)
    rc = !c->revoked && c->expires_ms > now && strcmp(c->tier, claims->tier) == 0;
  pthread_rwlock_unlock(&cache_lock);
  return rc;
}

void sessions_cache_clear(void) {
  pthread_rwlock_wrlock(&cache_lock);
  memset(cache, 0, sizeof(cache));
  revoke_gen++; /* a read begun before must not refill it */
  pthread_rwlock_unlock(&cache_lock);
}

/* A revocation on another instance (or notifications missed while the database was
 * away, "resync": then nothing cached can be trusted). */
static void on_note(const char *topic, const char *payload, bool self, void *arg) {
  (void)self;
  (void)arg;
  if (strcmp(topic, "revoke") == 0 && payload)
    cache_revoke(payload);
  else if (strcmp(topic, "resync") == 0)
    sessions_cache_clear();
}

void sessions_listen(store_t *store, bool on) {
  if (on)
    store_listen(store, on_note, NULL);
  else
    store_unlisten(store, on_note, NULL);
}

int sessions__insert(store_tx_t *tx, const char *sid, const char *tier, const char *user_id,
                     int64_t expires_ms) {
  char ts[32], subject[80];
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  int rc = store_exec(tx, NULL,
                      "INSERT INTO sessions (id, tier, user_id, created_at, expires_at_ms) "
                      "VALUES (?, ?, ?, ?, ?)",
                      "ssssi", sid, tier, user_id, ts, expires_ms);
  if (rc < 0) return rc;
  snprintf(subject, sizeof(subject), "sessions/%s", sid);
  json_t *data = json_pack("{s:s,s:s}", "session_id", sid, "tier", tier);
  if (user_id) json_object_set_new(data, "user_id", json_string(user_id));
  return events_record(tx, "session.started", subject, data, NULL);
}

static void refresh_hash(const char *token, char hex[65]) {
  unsigned char h[32];
  crypto_generichash(h, sizeof(h), (const unsigned char *)token, strlen(token), NULL, 0);
  sodium_bin2hex(hex, 65, h, sizeof(h));
}

int sessions__new_refresh(store_tx_t *tx, const char *sid, char out[SESSIONS_REFRESH_LEN]) {
  ids_random_token(out, SESSIONS_REFRESH_LEN, 32);
  char hex[65];
  refresh_hash(out, hex);
  int rc = store_exec(
      tx, NULL, "INSERT INTO refresh_tokens (hash, session_id, expires_at_ms) VALUES (?, ?, ?)",
      "ssi", hex, sid, time_now_ms() + SESSIONS_REFRESH_TTL_S * 1000);
  return rc < 0 ? rc : 0;
}

int sessions__revoke(store_tx_t *tx, const char *sid, const char *reason) {
  char ts[32], subject[80];
  cache_revoke(sid);
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  int rc =
      store_exec(tx, NULL, "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                 "ss", ts, sid);
  if (rc <= 0) return rc;
  /* Other instances drop it from their caches when this commits. */
  if ((rc = store_notify(tx, "revoke", sid)) < 0) return rc;
  snprintf(subject, sizeof(subject), "sessions/%s", sid);
  return events_record(tx, "session.revoked", subject,
                       json_pack("{s:s,s:s}", "session_id", sid, "reason", reason), NULL);
}

int sessions_sign(app_t *app, const char *sid, const char *sub, const char *tier, int64_t ttl_s,
                  char **token) {
  auth_claims_t c = {0};
  int64_t now = time_now_ms() / 1000;
  char jti[IDS_UUID_LEN];
  ids_uuid7(jti);
  snprintf(c.sub, sizeof(c.sub), "%s", sub);
  snprintf(c.sid, sizeof(c.sid), "%s", sid);
  snprintf(c.tier, sizeof(c.tier), "%s", tier);
  snprintf(c.jti, sizeof(c.jti), "%s", jti);
  c.iat = now;
  c.exp = now + ttl_s;
  return auth_token_sign(app->keys, &c, token);
}

typedef struct {
  const char *id, *tier, *user_id;
  int64_t expires_ms;
} new_session_t;

static int insert_tx(store_tx_t *tx, void *arg) {
  new_session_t *s = arg;
  return sessions__insert(tx, s->id, s->tier, s->user_id, s->expires_ms);
}

int sessions_create_anonymous(app_t *app, json_t **out) {
  *out = NULL;
  char sid[IDS_UUID_LEN];
  ids_uuid7(sid);
  int64_t ttl = app->cfg->access_ttl_s;
  new_session_t s = {sid, "anonymous", NULL, time_now_ms() + ttl * 1000};
  int rc = store_write(app->store, insert_tx, &s);
  if (rc < 0) return rc;
  char *tok;
  rc = sessions_sign(app, sid, sid, "anonymous", ttl, &tok);
  if (rc < 0) return rc;
  *out = json_pack("{s:s,s:s,s:I,s:s}", "access_token", tok, "token_type", "Bearer", "expires_in",
                   (json_int_t)ttl, "tier", "anonymous");
  free(tok);
  return 0;
}

typedef struct {
  const auth_claims_t *claims;
  uint64_t gen;
} check_t;

static int check_tx(store_tx_t *tx, void *arg) {
  check_t *k = arg;
  const auth_claims_t *c = k->claims;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT tier, expires_at_ms, revoked_at FROM sessions WHERE id = ?",
                     "s", c->sid);
  if (n < 0) return n;
  if (n == 0) return -ERR_UNAUTHENTICATED;
  bool alive = store_rows_is_null(rows, 0, 2) && store_rows_int(rows, 0, 1) > time_now_ms() &&
               strcmp(store_rows_text(rows, 0, 0), c->tier) == 0;
  cache_put(c->sid, store_rows_text(rows, 0, 0), store_rows_int(rows, 0, 1),
            !store_rows_is_null(rows, 0, 2), k->gen);
  store_rows_free(&rows);
  return alive ? 0 : -ERR_UNAUTHENTICATED;
}

int sessions_check(app_t *app, const auth_claims_t *claims) {
  int64_t now = time_now_ms();
  int hit = cache_check(claims, now);
  if (hit >= 0) return hit == 1 ? 0 : -ERR_UNAUTHENTICATED;
  check_t k = {claims, cache_gen()};
  return store_read(app->store, check_tx, &k);
}

typedef struct {
  const char *sid, *user_id, *revoke_sid;
  char refresh[SESSIONS_REFRESH_LEN];
} open_user_t;

static int open_user_tx(store_tx_t *tx, void *arg) {
  open_user_t *o = arg;
  int rc = sessions__insert(tx, o->sid, "user", o->user_id,
                            time_now_ms() + SESSIONS_REFRESH_TTL_S * 1000);
  if (rc == 0) rc = sessions__new_refresh(tx, o->sid, o->refresh);
  if (rc == 0 && o->revoke_sid) rc = sessions__revoke(tx, o->revoke_sid, "escalated");
  return rc < 0 ? rc : 0;
}

static json_t *user_pair(const char *access, const char *refresh, int64_t ttl) {
  return json_pack("{s:s,s:s,s:s,s:I,s:s}", "access_token", access, "refresh_token", refresh,
                   "token_type", "Bearer", "expires_in", (json_int_t)ttl, "tier", "user");
}

int sessions_open_user(app_t *app, const char *user_id, const char *revoke_sid, json_t **out) {
  *out = NULL;
  char sid[IDS_UUID_LEN];
  ids_uuid7(sid);
  open_user_t o = {sid, user_id, revoke_sid, ""};
  int rc = store_write(app->store, open_user_tx, &o);
  if (rc < 0) return rc;
  char *tok;
  rc = sessions_sign(app, sid, user_id, "user", app->cfg->access_ttl_s, &tok);
  if (rc < 0) return rc;
  *out = user_pair(tok, o.refresh, app->cfg->access_ttl_s);
  free(tok);
  return 0;
}

typedef struct {
  const char *token;
  char sid[IDS_UUID_LEN + 8], user_id[80];
  char refresh[SESSIONS_REFRESH_LEN];
  bool reused;
} refresh_t;

static int refresh_tx(store_tx_t *tx, void *arg) {
  refresh_t *r = arg;
  char hex[65];
  refresh_hash(r->token, hex);
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT t.session_id, t.spent, t.expires_at_ms, s.user_id, s.revoked_at "
                     "FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id "
                     "WHERE t.hash = ?",
                     "s", hex);
  if (n <= 0) return n < 0 ? n : -ERR_UNAUTHENTICATED;
  snprintf(r->sid, sizeof(r->sid), "%s", store_rows_text(rows, 0, 0));
  snprintf(r->user_id, sizeof(r->user_id), "%s",
           store_rows_text(rows, 0, 3) ? store_rows_text(rows, 0, 3) : "");
  bool spent = store_rows_int(rows, 0, 1) != 0;
  bool expired = store_rows_int(rows, 0, 2) <= time_now_ms();
  bool revoked = !store_rows_is_null(rows, 0, 4);
  store_rows_free(&rows);
  if (spent) {
    /* Reuse means the token leaked: end the whole session. Commit that, report 401. */
    r->reused = true;
    int rc = sessions__revoke(tx, r->sid, "refresh_token_reused");
    return rc < 0 ? rc : 0;
  }
  if (expired || revoked) return -ERR_UNAUTHENTICATED;
  int rc = store_exec(tx, NULL, "UPDATE refresh_tokens SET spent = 1 WHERE hash = ?", "s", hex);
  if (rc < 0) return rc;
  return sessions__new_refresh(tx, r->sid, r->refresh);
}

int sessions_refresh(app_t *app, const char *refresh_token, json_t **out) {
  *out = NULL;
  refresh_t r;
  memset(&r, 0, sizeof(r));
  r.token = refresh_token;
  int rc = store_write(app->store, refresh_tx, &r);
  if (rc < 0) return rc;
  if (r.reused) {
    log_warn("sessions", "spent refresh token presented again; session %s revoked", r.sid);
    return -ERR_UNAUTHENTICATED;
  }
  char *tok;
  rc = sessions_sign(app, r.sid, r.user_id, "user", app->cfg->access_ttl_s, &tok);
  if (rc < 0) return rc;
  *out = user_pair(tok, r.refresh, app->cfg->access_ttl_s);
  free(tok);
  return 0;
}

typedef struct {
  const char *sid, *reason;
} revoke_t;

static int revoke_tx(store_tx_t *tx, void *arg) {
  revoke_t *r = arg;
  int rc = sessions__revoke(tx, r->sid, r->reason);
  return rc < 0 ? rc : 0;
}

int sessions_revoke(app_t *app, const char *sid, const char *reason) {
  revoke_t r = {sid, reason};
  return store_write(app->store, revoke_tx, &r);
}
