/* Sessions: the server-side record behind every token, so a session (and every
 * token it issued) can be revoked at once. Tiers escalate anonymous ->
 * registration -> user; devices get their own device-tier sessions. */
#ifndef IOTFIN_SERVICES_SESSIONS_H
#define IOTFIN_SERVICES_SESSIONS_H

#include <jansson.h>

#include "app.h"
#include "auth/token.h"
#include "core/ids.h"
#include "store/store.h"

#define SESSIONS_REFRESH_TTL_S (30LL * 86400)
#define SESSIONS_REFRESH_LEN 96

/* Opens an anonymous session and returns its answer body
 * {access_token, token_type, expires_in, tier} in *out (caller owns). */
int sessions_create_anonymous(app_t *app, json_t **out);

/* 0 when the token's session exists, is unrevoked and unexpired; else
 * -ERR_UNAUTHENTICATED. Any thread. */
int sessions_check(app_t *app, const auth_claims_t *claims);

/* Forgets every cached session state (tests, and a store swap). */
/* Follows revocations made by other instances on the same database (on: start
 * listening; off: stop, before the store closes). */
void sessions_listen(store_t *store, bool on);
void sessions_cache_clear(void);

/* Inside a write transaction: inserts session sid of tier for user_id (may be
 * NULL) and its session.started event. */
int sessions__insert(store_tx_t *tx, const char *sid, const char *tier, const char *user_id,
                     int64_t expires_ms);
/* Inside a write transaction: creates a refresh token for sid into out. */
int sessions__new_refresh(store_tx_t *tx, const char *sid, char out[SESSIONS_REFRESH_LEN]);
/* Inside a write transaction: revokes sid (idempotent) with its session.revoked event. */
int sessions__revoke(store_tx_t *tx, const char *sid, const char *reason);

/* Signs an access token for session sid; *token is malloc'd. */
int sessions_sign(app_t *app, const char *sid, const char *sub, const char *tier, int64_t ttl_s,
                  char **token);

/* Opens a user session for user_id: {access_token, refresh_token, token_type,
 * expires_in, tier: "user"}. revoke_sid (may be NULL) is revoked in the same
 * transaction (the registration session being traded in). */
int sessions_open_user(app_t *app, const char *user_id, const char *revoke_sid, json_t **out);

/* Trades a refresh token for a new pair. A spent token revokes the session.
 * -ERR_UNAUTHENTICATED for anything not valid. */
int sessions_refresh(app_t *app, const char *refresh_token, json_t **out);

/* Revokes session sid now. */
int sessions_revoke(app_t *app, const char *sid, const char *reason);

#endif
