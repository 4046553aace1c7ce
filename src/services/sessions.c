/* Session records and the tokens they issue. A session row is written together
 * with its session.started event, then the token is signed outside the transaction. */
#include "services/sessions.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/ids.h"
#include "core/timeutil.h"
#include "services/events.h"

typedef struct {
  const char *id, *tier, *user_id;
  int64_t expires_ms;
} new_session_t;

static int insert_session(store_tx_t *tx, void *arg) {
  new_session_t *s = arg;
  char ts[32], subject[80];
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  int rc = store_exec(tx, NULL,
                      "INSERT INTO sessions (id, tier, user_id, created_at, expires_at_ms) "
                      "VALUES (?, ?, ?, ?, ?)",
                      "ssssi", s->id, s->tier, s->user_id, ts, s->expires_ms);
  if (rc < 0) return rc;
  snprintf(subject, sizeof(subject), "sessions/%s", s->id);
  return events_record(tx, "session.started", subject,
                       json_pack("{s:s,s:s}", "session_id", s->id, "tier", s->tier), NULL);
}

int sessions_create_anonymous(app_t *app, json_t **out) {
  *out = NULL;
  char sid[IDS_UUID_LEN], jti[IDS_UUID_LEN];
  ids_uuid7(sid);
  ids_uuid7(jti);
  int64_t now = time_now_ms() / 1000, ttl = app->cfg->access_ttl_s;
  new_session_t s = {sid, "anonymous", NULL, (now + ttl) * 1000};
  int rc = store_write(app->store, insert_session, &s);
  if (rc < 0) return rc;
  auth_claims_t c = {0};
  snprintf(c.sub, sizeof(c.sub), "%s", sid);
  snprintf(c.sid, sizeof(c.sid), "%s", sid);
  snprintf(c.tier, sizeof(c.tier), "anonymous");
  snprintf(c.jti, sizeof(c.jti), "%s", jti);
  c.iat = now;
  c.exp = now + ttl;
  char *tok;
  rc = auth_token_sign(app->keys, &c, &tok);
  if (rc < 0) return rc;
  *out = json_pack("{s:s,s:s,s:I,s:s}", "access_token", tok, "token_type", "Bearer",
                   "expires_in", (json_int_t)ttl, "tier", "anonymous");
  free(tok);
  return 0;
}

static int check_tx(store_tx_t *tx, void *arg) {
  const auth_claims_t *c = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT tier FROM sessions WHERE id = ? AND revoked_at IS NULL "
                     "AND expires_at_ms > ?",
                     "si", c->sid, time_now_ms());
  int rc = (n == 1 && strcmp(store_rows_text(rows, 0, 0), c->tier) == 0)
               ? 0
               : -ERR_UNAUTHENTICATED;
  store_rows_free(&rows);
  return n < 0 ? n : rc;
}

int sessions_check(app_t *app, const auth_claims_t *claims) {
  return store_read(app->store, check_tx, (void *)claims);
}
