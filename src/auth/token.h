/* Bearer tokens: JWTs (RFC 7519) signed with EdDSA (Ed25519, libsodium). The public
 * keys are published as a JWKS so any party can verify a token offline; whether a
 * token's session is still alive is a separate check (services/sessions). */
#ifndef IOTFIN_AUTH_TOKEN_H
#define IOTFIN_AUTH_TOKEN_H

#include <jansson.h>
#include <stdint.h>

typedef struct auth_keys auth_keys_t;

typedef struct {
  char sub[64];  /* user id, device id, or session id for anonymous sessions */
  char sid[64];  /* session id */
  char tier[16]; /* anonymous, registration, user, device */
  char jti[64];
  int64_t iat, exp; /* seconds since the epoch */
} auth_claims_t;

/* Loads the signing keys kept in dir (created 0700), generating the first one when
 * there is none. Returns 0 and *out (free with auth_keys_free) or -ERR_INTERNAL. */
int auth_keys_load(const char *dir, auth_keys_t **out);
void auth_keys_free(auth_keys_t **keys);
/* Generates a new signing key, which signs from now on; older keys keep verifying
 * until keep_s after they stopped signing (the longest token lifetime), then their
 * files are removed. Writes the new kid. Returns 0 or -ERR_INTERNAL. Any thread. */
int auth_keys_rotate(auth_keys_t *keys, int64_t keep_s, char kid_out[17]);
/* Replaces the key set with n (at most 8) Ed25519 secret keys and the times they
 * were made (ms); the newest signs. Verified-token memory is dropped, so a key
 * that left the set stops verifying at once. Returns 0 or -ERR_INTERNAL. */
int auth_keys_set(auth_keys_t *keys, const unsigned char (*sk)[64], const int64_t *created_ms,
                  int n);
/* Copies up to max of the keys out (secret key, time made in ms); returns how many. */
int auth_keys_export(const auth_keys_t *keys, unsigned char (*sk)[64], int64_t *created_ms,
                     int max);
/* The public keys as a JWKS object; the caller owns the new reference. */
json_t *auth_keys_jwks(const auth_keys_t *keys);

/* Signs claims (iss is always "iotfin") with the newest key. Returns a malloc'd
 * compact JWT in *out, or -ERR_INTERNAL. Thread-safe. */
int auth_token_sign(const auth_keys_t *keys, const auth_claims_t *claims, char **out);
/* Checks the signature, alg, kid, iss and expiry against now_s. Fills *claims and
 * returns 0, or -ERR_UNAUTHENTICATED for anything wrong. Thread-safe. */
int auth_token_verify(const auth_keys_t *keys, const char *jwt, int64_t now_s,
                      auth_claims_t *claims);

#endif
