/* Signing keys in the store (signing_keys.h). Secrets are stored base64url-encoded;
 * the table is as sensitive as the data dir's key files were: protect the database
 * accordingly (docs/security.md). */
#include "services/signing_keys.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/timeutil.h"

#define KEYS_MAX 8
#define SECRET_B64_LEN sodium_base64_ENCODED_LEN(64, sodium_base64_VARIANT_URLSAFE_NO_PADDING)

typedef struct {
  unsigned char sk[KEYS_MAX][64];
  int64_t created[KEYS_MAX];
  char kid[KEYS_MAX][17];
  int n;
} keyset_t;

static void kid_of(const unsigned char sk[64], char kid[17]) {
  unsigned char pk[crypto_sign_PUBLICKEYBYTES], h[crypto_generichash_BYTES];
  crypto_sign_ed25519_sk_to_pk(pk, sk);
  crypto_generichash(h, sizeof(h), pk, sizeof(pk), NULL, 0);
  sodium_bin2hex(kid, 17, h, 8);
}

static int insert_key(store_tx_t *tx, const unsigned char sk[64], int64_t created) {
  char kid[17], b64[SECRET_B64_LEN];
  kid_of(sk, kid);
  sodium_bin2base64(b64, sizeof(b64), sk, 64, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  int rc = store_exec(tx, NULL,
                      "INSERT INTO signing_keys (kid, secret, created_at_ms) VALUES (?, ?, ?) "
                      "ON CONFLICT (kid) DO NOTHING",
                      "ssi", kid, b64, created);
  sodium_memzero(b64, sizeof(b64));
  return rc < 0 ? rc : 0;
}

/* Newest first; at most KEYS_MAX (older ones cannot have signed a live token). */
static int read_tx(store_tx_t *tx, void *arg) {
  keyset_t *ks = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows,
                     "SELECT secret, created_at_ms FROM signing_keys "
                     "ORDER BY created_at_ms DESC, kid DESC LIMIT ?",
                     "i", (int64_t)KEYS_MAX);
  if (n < 0) return n;
  ks->n = 0;
  for (int i = 0; i < n; i++) {
    const char *b64 = store_rows_text(rows, i, 0);
    size_t len = 0;
    if (!b64 ||
        sodium_base642bin(ks->sk[ks->n], 64, b64, strlen(b64), NULL, &len, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        len != 64) {
      log_warn("auth", "a signing key in the database is not readable; ignored");
      continue;
    }
    ks->created[ks->n] = store_rows_int(rows, i, 1);
    kid_of(ks->sk[ks->n], ks->kid[ks->n]);
    ks->n++;
  }
  store_rows_free(&rows);
  return ks->n;
}

/* The data dir's keys go in only when the table is empty: the first instance (or
 * the first start after an upgrade) brings them, later ones find the table set. */
static int seed_tx(store_tx_t *tx, void *arg) {
  keyset_t *ks = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT COUNT(*) FROM signing_keys", "");
  if (n < 0) return n;
  int64_t have = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  if (have > 0) return 0;
  for (int i = 0; i < ks->n; i++) {
    int rc = insert_key(tx, ks->sk[i], ks->created[i]);
    if (rc < 0) return rc;
  }
  /* Instances starting at the same moment may each bring their keys: whichever
   * read the table first hears of the others'. */
  int rc = store_notify(tx, "keys", NULL);
  return rc < 0 ? rc : ks->n;
}

static int reload(app_t *app) {
  keyset_t *ks = sodium_malloc(sizeof(*ks));
  if (!ks) return -ERR_INTERNAL;
  int rc = store_read(app->store, read_tx, ks);
  if (rc > 0)
    rc = auth_keys_set(app->keys, (const unsigned char(*)[64])ks->sk, ks->created, ks->n);
  else if (rc == 0)
    rc = -ERR_INTERNAL; /* an empty table: nothing may sign */
  sodium_free(ks);
  return rc;
}

static void on_note(const char *topic, const char *payload, bool self, void *arg) {
  (void)payload;
  (void)self;
  if (strcmp(topic, "keys") != 0 && strcmp(topic, "resync") != 0) return;
  if (reload(arg) < 0)
    log_warn("auth", "could not reload the signing keys; will on the next change");
}

int signing_keys_start(app_t *app) {
  keyset_t *ks = sodium_malloc(sizeof(*ks));
  if (!ks) return -ERR_INTERNAL;
  ks->n = auth_keys_export(app->keys, ks->sk, ks->created, KEYS_MAX);
  int rc = store_write(app->store, seed_tx, ks);
  sodium_free(ks);
  if (rc > 0) log_info("auth", "%d signing key(s) from the data dir stored in the database", rc);
  if (rc >= 0) rc = reload(app);
  if (rc < 0) {
    log_error("auth", "cannot read the signing keys from the database");
    return rc;
  }
  store_listen(app->store, on_note, app);
  return 0;
}

void signing_keys_stop(app_t *app) {
  if (app->store) store_unlisten(app->store, on_note, app);
}

typedef struct {
  const unsigned char *sk;
  int64_t now, keep_ms;
} rotate_t;

static int rotate_tx(store_tx_t *tx, void *arg) {
  rotate_t *r = arg;
  int rc = insert_key(tx, r->sk, r->now);
  if (rc < 0) return rc;
  /* A key stopped signing when the next newer key appeared; once every token it
   * signed has expired (keep_ms later) it is no longer needed to verify. */
  rc = store_exec(tx, NULL,
                  "DELETE FROM signing_keys WHERE (SELECT MIN(n.created_at_ms) FROM signing_keys "
                  "n WHERE n.created_at_ms > signing_keys.created_at_ms) < ?",
                  "i", r->now - r->keep_ms);
  if (rc < 0) return rc;
  if (rc > 0) log_info("auth", "retired %d signing key(s)", rc);
  return store_notify(tx, "keys", NULL);
}

int signing_keys_rotate(app_t *app, int64_t keep_s, char kid_out[17]) {
  unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
  crypto_sign_keypair(pk, sk);
  rotate_t r = {sk, time_now_ms(), keep_s * 1000};
  int rc = store_write(app->store, rotate_tx, &r);
  if (rc >= 0) {
    kid_of(sk, kid_out);
    log_info("auth", "generated signing key %s", kid_out);
    rc = reload(app);
  }
  sodium_memzero(sk, sizeof(sk));
  return rc < 0 ? rc : 0;
}
