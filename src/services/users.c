/* User registration, login and the KYC decision. Passwords are hashed with
 * Argon2id (libsodium) and never logged; unknown users still cost one hash
 * verification so that timing does not reveal which emails exist. */
#include "services/users.h"

#include <ctype.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "mail/mail.h"
#include "partners/partners.h"
#include "services/events.h"
#include "services/sessions.h"
#include "store/rowjson.h"

static void add_err(json_t **errs, const char *field, const char *msg) {
  if (!*errs) *errs = json_array();
  json_array_append_new(*errs, json_pack("{s:s,s:s}", "field", field, "message", msg));
}

/* One address, as mail will accept it: "a,b@example.com" must never be two. */
static bool email_valid(const char *e) {
  const char *at = strchr(e, '@');
  return mail_address_valid(e) && at && strchr(at, '.'); /* a user's mail leaves the host */
}

static bool has_controls(const char *s) {
  for (; s && *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
  return false;
}

/* A new hash costs what IOTFIN_PASSWORD_HASH_MIB says; a stored one is verified
 * with the cost written in it, so changing the setting locks nobody out. */
static int hash_password(const app_t *app, char out[crypto_pwhash_STRBYTES], const char *password) {
  return crypto_pwhash_str(out, password, strlen(password), crypto_pwhash_OPSLIMIT_INTERACTIVE,
                           (size_t)app->cfg->password_hash_mib << 20);
}

/* A fixed hash to verify against when the user does not exist, made with the same
 * cost as new ones, so an unknown email takes as long as a wrong password. */
static char dummy[crypto_pwhash_STRBYTES];
static bool dummy_made;
static pthread_mutex_t dummy_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *dummy_hash(const app_t *app) {
  pthread_mutex_lock(&dummy_lock);
  if (!dummy_made && hash_password(app, dummy, "no-such-user-password") != 0)
    dummy[0] = 0; /* out of memory: verification then fails, which is still a refusal */
  dummy_made = true;
  pthread_mutex_unlock(&dummy_lock);
  return dummy;
}

typedef struct {
  const char *user_id, *reg_id, *sid, *type, *email, *username, *subject, *hash, *name;
  int64_t expires_ms, ttl_s;
  const char *token; /* the registration session's, signed before the write */
  idem_pending_t *idem;
  json_t *out; /* the 202 body, built in the transaction to be recorded with it */
} reg_t;

static int register_tx(store_tx_t *tx, void *arg) {
  reg_t *r = arg;
  char subject[80], ts[32];
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  int rc = store_exec(tx, NULL,
                      "INSERT INTO users (id, type, email, username, subject, password_hash, "
                      "name, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                      "ssssssss", r->user_id, r->type, r->email, r->username, r->subject, r->hash,
                      r->name, ts);
  if (rc == -ERR_CONFLICT) return -ERR_EMAIL_TAKEN;
  if (rc < 0) return rc;
  rc = sessions__insert(tx, r->sid, "registration", r->user_id, r->expires_ms);
  if (rc < 0) return rc;
  rc = store_exec(tx, NULL,
                  "INSERT INTO registrations (id, user_id, status, session_id, created_at) "
                  "VALUES (?, ?, 'pending', ?, ?)",
                  "ssss", r->reg_id, r->user_id, r->sid, ts);
  if (rc < 0) return rc;
  snprintf(subject, sizeof(subject), "users/%s", r->user_id);
  rc = events_record(tx, "user.registration.requested", subject,
                     json_pack("{s:s,s:s,s:s,s:s?,s:s}", "registration_id", r->reg_id, "user_id",
                               r->user_id, "type", r->type, "email", r->email, "name", r->name),
                     NULL);
  if (rc < 0) return rc;
  json_decref(r->out);
  r->out =
      json_pack("{s:{s:s,s:s,s:s,s:s},s:s,s:s,s:I,s:s}", "registration", "id", r->reg_id, "status",
                "pending", "user_id", r->user_id, "created_at", ts, "access_token", r->token,
                "token_type", "Bearer", "expires_in", (json_int_t)r->ttl_s, "tier", "registration");
  return r->out ? idem_record_tx(tx, r->idem, 202, r->out) : -ERR_INTERNAL;
}

/* Asks IDENTITY whether username/password are right; fills *who on success. */
static int identity_check(app_t *app, const char *username, const char *password, json_t **who) {
  json_t *req = json_pack("{s:s,s:s}", "username", username, "password", password);
  partner_result_t res;
  partner_call(app, PARTNER_IDENTITY, "POST", "/sessions", req, NULL, 0, &res);
  json_decref(req);
  int rc = 0;
  if (res.verdict == PARTNER_OK && json_is_object(res.body) &&
      json_is_string(json_object_get(res.body, "subject"))) {
    *who = json_incref(res.body);
  } else if (res.status == 401 || res.status == 403) {
    rc = -ERR_INVALID_CREDENTIALS;
  } else {
    log_warn("users", "IDENTITY unavailable: %s", res.error[0] ? res.error : "bad answer");
    rc = -ERR_UPSTREAM_UNAVAILABLE;
  }
  partner_result_free(&res);
  return rc;
}

int users_register(app_t *app, json_t *body, idem_pending_t *idem, json_t **out, json_t **errors) {
  *out = NULL;
  *errors = NULL;
  const char *type = json_string_value(json_object_get(body, "type"));
  const char *email = json_string_value(json_object_get(body, "email"));
  const char *password = json_string_value(json_object_get(body, "password"));
  const char *name = json_string_value(json_object_get(body, "name"));
  const char *username = json_string_value(json_object_get(body, "username"));
  bool local = strcmp(type, "local") == 0;
  if (local) {
    if (!email)
      add_err(errors, "email", "is required for a local registration");
    else if (!email_valid(email))
      add_err(errors, "email", "is not a valid email address");
    if (!password)
      add_err(errors, "password", "is required");
    else if (strlen(password) < 10)
      add_err(errors, "password", "must be at least 10 characters");
    if (!name) add_err(errors, "name", "is required for a local registration");
    if (username) add_err(errors, "username", "is only for partner registrations");
  } else {
    if (!username)
      add_err(errors, "username", "is required for a partner registration");
    else if (has_controls(username))
      add_err(errors, "username", "must not contain control characters");
    if (!password) add_err(errors, "password", "is required");
    if (email) add_err(errors, "email", "comes from the identity partner");
    if (name) add_err(errors, "name", "comes from the identity partner");
  }
  if (*errors) return -ERR_VALIDATION_FAILED;

  char user_id[IDS_UUID_LEN], reg_id[IDS_UUID_LEN], sid[IDS_UUID_LEN];
  ids_uuid7(user_id);
  ids_uuid7(reg_id);
  ids_uuid7(sid);
  char lower[256] = "", hash[crypto_pwhash_STRBYTES] = "";
  json_t *who = NULL;
  reg_t r = {user_id, reg_id, sid, type, NULL, NULL, NULL, NULL, name, 0, 0, NULL, idem, NULL};
  if (local) {
    snprintf(lower, sizeof(lower), "%s", email);
    for (char *c = lower; *c; c++)
      *c = (char)tolower((unsigned char)*c);
    r.email = lower;
    if (hash_password(app, hash, password) != 0) return -ERR_INTERNAL;
    r.hash = hash;
  } else {
    int rc = identity_check(app, username, password, &who);
    if (rc < 0) return rc;
    r.username = username;
    r.subject = json_string_value(json_object_get(who, "subject"));
    const char *pe = json_string_value(json_object_get(who, "email"));
    if (pe && !email_valid(pe)) {
      /* Stored, it would reach a mail's To: the user simply gets no mail. */
      log_warn("users", "the identity partner's email for a partner user is not one plain "
                        "address; it is not kept");
      pe = NULL;
    }
    if (pe) {
      snprintf(lower, sizeof(lower), "%s", pe);
      for (char *c = lower; *c; c++)
        *c = (char)tolower((unsigned char)*c);
      r.email = lower;
    }
    r.name = json_string_value(json_object_get(who, "name"));
    if (!r.name) r.name = username;
  }
  r.ttl_s = app->cfg->access_ttl_s;
  r.expires_ms = time_now_ms() + r.ttl_s * 1000;
  /* Signed first: the answer, token included, commits with the registration. The
   * token names a session that exists only once that commit is done. */
  char *tok;
  int rc = sessions_sign(app, sid, user_id, "registration", r.ttl_s, &tok);
  if (rc == 0) {
    r.token = tok;
    rc = store_write(app->store, register_tx, &r);
    free(tok);
  }
  json_decref(who);
  if (rc < 0) {
    json_decref(r.out);
    return rc;
  }
  log_info("users", "registration %s requested (%s user %s)", reg_id, type, user_id);
  *out = r.out;
  return 0;
}

typedef struct {
  const char *id, *user_id;
  json_t *row;
} reg_q_t;

static int reg_get_tx(store_tx_t *tx, void *arg) {
  reg_q_t *q = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT r.id, r.status, r.user_id, r.created_at, r.decided_at, r.kyc_id, "
                     "u.email, u.name, r.session_id FROM registrations r "
                     "JOIN users u ON u.id = r.user_id "
                     "WHERE r.id = ? AND (? IS NULL OR r.user_id = ?)",
                     "sss", q->id, q->user_id, q->user_id);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  q->row = json_pack("{s:s,s:s,s:s,s:s,s:s?,s:s?,s:s?,s:s?,s:s}", "id", store_rows_text(rows, 0, 0),
                     "status", store_rows_text(rows, 0, 1), "user_id", store_rows_text(rows, 0, 2),
                     "created_at", store_rows_text(rows, 0, 3), "decided_at",
                     store_rows_text(rows, 0, 4), "kyc_id", store_rows_text(rows, 0, 5), "email",
                     store_rows_text(rows, 0, 6), "name", store_rows_text(rows, 0, 7), "session_id",
                     store_rows_text(rows, 0, 8));
  store_rows_free(&rows);
  return 0;
}

int users_registration_load(app_t *app, const char *registration_id, json_t **out) {
  reg_q_t q = {registration_id, NULL, NULL};
  int rc = store_read(app->store, reg_get_tx, &q);
  *out = q.row;
  return rc;
}

int users_registration_get(app_t *app, const auth_claims_t *claims, const char *id, json_t **out) {
  reg_q_t q = {id, claims->sub, NULL};
  int rc = store_read(app->store, reg_get_tx, &q);
  if (rc < 0) return rc;
  json_t *r = q.row;
  *out =
      json_pack("{s:O,s:O,s:O,s:O,s:O}", "id", json_object_get(r, "id"), "status",
                json_object_get(r, "status"), "user_id", json_object_get(r, "user_id"),
                "created_at", json_object_get(r, "created_at"), "decided_at",
                json_object_get(r, "decided_at") ? json_object_get(r, "decided_at") : json_null());
  json_decref(r);
  return 0;
}

int users_registration_session(app_t *app, const auth_claims_t *claims, const char *id,
                               json_t **out) {
  reg_q_t q = {id, claims->sub, NULL};
  int rc = store_read(app->store, reg_get_tx, &q);
  if (rc < 0) return rc;
  const char *status = json_string_value(json_object_get(q.row, "status"));
  if (strcmp(status, "pending") == 0)
    rc = -ERR_REGISTRATION_PENDING;
  else if (strcmp(status, "approved") != 0)
    rc = -ERR_FORBIDDEN;
  else
    rc = sessions_open_user(app, claims->sub, claims->sid, out);
  json_decref(q.row);
  return rc;
}

typedef struct {
  const char *email, *username;
  char id[80], status[24], hash[crypto_pwhash_STRBYTES];
  bool found;
} login_q_t;

static int login_tx(store_tx_t *tx, void *arg) {
  login_q_t *q = arg;
  store_rows_t *rows = NULL;
  int n = q->email ? store_exec(tx, &rows,
                                "SELECT id, status, password_hash FROM users WHERE email = ? "
                                "AND type = 'local'",
                                "s", q->email)
                   : store_exec(tx, &rows,
                                "SELECT id, status, '' FROM users WHERE username = ? "
                                "AND type = 'partner'",
                                "s", q->username);
  if (n < 0) return n;
  if (n == 1) {
    q->found = true;
    snprintf(q->id, sizeof(q->id), "%s", store_rows_text(rows, 0, 0));
    snprintf(q->status, sizeof(q->status), "%s", store_rows_text(rows, 0, 1));
    snprintf(q->hash, sizeof(q->hash), "%s",
             store_rows_text(rows, 0, 2) ? store_rows_text(rows, 0, 2) : "");
  }
  store_rows_free(&rows);
  return 0;
}

int users_login(app_t *app, json_t *body, json_t **out, json_t **errors) {
  *out = NULL;
  *errors = NULL;
  const char *type = json_string_value(json_object_get(body, "type"));
  const char *email = json_string_value(json_object_get(body, "email"));
  const char *username = json_string_value(json_object_get(body, "username"));
  const char *password = json_string_value(json_object_get(body, "password"));
  bool partner = type && strcmp(type, "partner") == 0;
  if (partner && !username) add_err(errors, "username", "is required for partner users");
  if (!partner && !email) add_err(errors, "email", "is required");
  if (partner && email) add_err(errors, "email", "partner users sign in with username");
  if (!partner && username) add_err(errors, "username", "is only for partner users");
  if (*errors) return -ERR_VALIDATION_FAILED;

  login_q_t q;
  memset(&q, 0, sizeof(q));
  char lower[256];
  if (partner) {
    json_t *who = NULL;
    int rc = identity_check(app, username, password, &who);
    json_decref(who);
    if (rc < 0) return rc;
    q.username = username;
  } else {
    snprintf(lower, sizeof(lower), "%s", email);
    for (char *c = lower; *c; c++)
      *c = (char)tolower((unsigned char)*c);
    q.email = lower;
  }
  int rc = store_read(app->store, login_tx, &q);
  if (rc < 0) return rc;
  if (!partner) {
    const char *h = q.found ? q.hash : dummy_hash(app);
    bool ok = crypto_pwhash_str_verify(h, password, strlen(password)) == 0;
    if (!q.found || !ok) return -ERR_INVALID_CREDENTIALS;
  } else if (!q.found) {
    return -ERR_INVALID_CREDENTIALS;
  }
  if (strcmp(q.status, "approved") != 0) return -ERR_FORBIDDEN;
  return sessions_open_user(app, q.id, NULL, out);
}

typedef struct {
  const char *id;
  char *text;
  size_t len;
} me_q_t;

static const row_field_t ME_FIELDS[] = {{"id", ROW_STRING},        {"type", ROW_STRING},
                                        {"email", ROW_STRING},     {"name", ROW_STRING},
                                        {"status", ROW_STRING},    {"created_at", ROW_STRING},
                                        {"username", ROW_OMITTED}, {NULL, ROW_STRING}};

static int me_tx(store_tx_t *tx, void *arg) {
  me_q_t *q = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT id, type, email, name, status, created_at, username FROM users "
                     "WHERE id = ?",
                     "s", q->id);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  q->text = row_text(ME_FIELDS, rows, 0, &q->len);
  store_rows_free(&rows);
  return q->text ? 0 : -ERR_INTERNAL;
}

int users_me(app_t *app, const char *user_id, char **json, size_t *len) {
  me_q_t q = {user_id, NULL, 0};
  int rc = store_read(app->store, me_tx, &q);
  *json = q.text;
  *len = q.len;
  return rc;
}

typedef struct {
  const char *reg_id, *kyc_id, *user_id, *status;
  int decided;
} kyc_t;

static int apply_tx(store_tx_t *tx, void *arg) {
  kyc_t *k = arg;
  k->decided = 0;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT r.id, r.user_id, r.status, u.email, u.name FROM registrations r "
                     "JOIN users u ON u.id = r.user_id WHERE "
                     "(? IS NOT NULL AND r.id = ?) OR (? IS NOT NULL AND r.kyc_id = ?) OR "
                     "(? IS NOT NULL AND r.user_id = ?) ORDER BY r.created_at DESC LIMIT 1",
                     "ssssss", k->reg_id, k->reg_id, k->kyc_id, k->kyc_id, k->user_id, k->user_id);
  if (n <= 0) return n < 0 ? n : -ERR_NOT_FOUND;
  char reg_id[80], user_id[80], subject[100], ts[32];
  snprintf(reg_id, sizeof(reg_id), "%s", store_rows_text(rows, 0, 0));
  snprintf(user_id, sizeof(user_id), "%s", store_rows_text(rows, 0, 1));
  bool pending = strcmp(store_rows_text(rows, 0, 2), "pending") == 0;
  json_t *data =
      json_pack("{s:s,s:s,s:s?,s:s?}", "registration_id", reg_id, "user_id", user_id, "email",
                store_rows_text(rows, 0, 3), "name", store_rows_text(rows, 0, 4));
  store_rows_free(&rows);
  if (!pending) {
    json_decref(data);
    return 0;
  }
  bool approved = strcmp(k->status, "approved") == 0;
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  int rc = store_exec(tx, NULL,
                      "UPDATE registrations SET status = ?, decided_at = ? WHERE id = ? "
                      "AND status = 'pending'",
                      "sss", approved ? "approved" : "rejected", ts, reg_id);
  if (rc >= 0)
    rc = store_exec(tx, NULL, "UPDATE users SET status = ? WHERE id = ?", "ss",
                    approved ? "approved" : "rejected", user_id);
  if (rc < 0) {
    json_decref(data);
    return rc;
  }
  snprintf(subject, sizeof(subject), "users/%s", user_id);
  k->decided = 1;
  return events_record(tx, approved ? "user.registration.approved" : "user.registration.rejected",
                       subject, data, NULL);
}

int users_apply_kyc(app_t *app, const char *registration_id, const char *kyc_id,
                    const char *user_id, const char *status) {
  if (strcmp(status, "approved") != 0 && strcmp(status, "rejected") != 0) return 0;
  kyc_t k = {registration_id, kyc_id, user_id, status, 0};
  int rc = store_write(app->store, apply_tx, &k);
  if (rc < 0) return rc;
  if (k.decided) log_info("users", "registration decided by KYC: %s", status);
  return k.decided;
}

typedef struct {
  const char *reg_id, *kyc_id;
} setkyc_t;

static int setkyc_tx(store_tx_t *tx, void *arg) {
  setkyc_t *s = arg;
  int rc = store_exec(tx, NULL, "UPDATE registrations SET kyc_id = ? WHERE id = ?", "ss", s->kyc_id,
                      s->reg_id);
  return rc < 0 ? rc : 0;
}

int users_set_kyc_id(app_t *app, const char *registration_id, const char *kyc_id) {
  setkyc_t s = {registration_id, kyc_id};
  return store_write(app->store, setkyc_tx, &s);
}
