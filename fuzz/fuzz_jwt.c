/* Bearer token verification (auth/token.c auth_token_verify), the check in front of
 * every authenticated route and, in the plugin's own copy, the broker.
 * First byte even: the rest is the token as a client sends it; nothing can be
 * accepted, since no input can carry a valid signature of this run's fresh key.
 * First byte odd: the rest is "<header JSON>\0<payload JSON>"; the target encodes and
 * signs them with the real key, so the fuzzer explores the claim checks behind the
 * signature (alg, kid, iss, exp, claim types and sizes); bit 1 then flips a
 * signature byte, which must be refused. */
#include <jansson.h>
#include <sodium.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/token.h"

#define NOW 1800000000LL

static auth_keys_t *keys;
static unsigned char sk[crypto_sign_SECRETKEYBYTES];
static char root[64], keydir[128], keyfile[192], kid[17];

/* Seeds name the key "0000000000000000"; this run's key has another kid. */
#define KID_PLACEHOLDER "0000000000000000"

static void cleanup(void) {
  auth_keys_free(&keys);
  unlink(keyfile);
  rmdir(keydir);
  rmdir(root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  if (sodium_init() < 0) abort();
  strcpy(root, "/tmp/iotfin-fuzz-jwt-XXXXXX");
  if (!mkdtemp(root)) abort();
  snprintf(keydir, sizeof(keydir), "%s/keys", root);
  snprintf(keyfile, sizeof(keyfile), "%s/fuzz.ed25519", keydir);
  if (mkdir(keydir, 0700) < 0) abort();
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
  crypto_sign_keypair(pk, sk);
  FILE *f = fopen(keyfile, "wb");
  if (!f || fwrite(sk, sizeof(sk), 1, f) != 1 || fclose(f) != 0) abort();
  if (auth_keys_load(keydir, &keys) != 0) abort();
  json_t *jwks = auth_keys_jwks(keys);
  snprintf(
      kid, sizeof(kid), "%s",
      json_string_value(json_object_get(json_array_get(json_object_get(jwks, "keys"), 0), "kid")));
  json_decref(jwks);
  if (strlen(kid) != 16) abort();
  atexit(cleanup);
  return 0;
}

static char *b64(const void *data, size_t len) {
  size_t cap = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  char *s = malloc(cap);
  if (s) sodium_bin2base64(s, cap, data, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  return s;
}

static void check_claims(const auth_claims_t *c) {
  if (c->exp <= NOW) abort();
  if (strnlen(c->sub, sizeof(c->sub)) == sizeof(c->sub) ||
      strnlen(c->sid, sizeof(c->sid)) == sizeof(c->sid) ||
      strnlen(c->tier, sizeof(c->tier)) == sizeof(c->tier) ||
      strnlen(c->jti, sizeof(c->jti)) == sizeof(c->jti))
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  auth_claims_t c;
  if (!(data[0] & 1)) {
    char *jwt = malloc(size);
    memcpy(jwt, data + 1, size - 1);
    jwt[size - 1] = 0;
    if (auth_token_verify(keys, jwt, NOW, &c) == 0) abort(); /* a forgery */
    free(jwt);
    return 0;
  }
  const uint8_t *nul = memchr(data + 1, 0, size - 1);
  if (!nul) return 0;
  size_t hl = (size_t)(nul - data - 1), pl = size - 1 - hl - 1;
  unsigned char *hdr = malloc(hl + 1);
  memcpy(hdr, data + 1, hl);
  for (unsigned char *k = hdr; (k = memmem(k, hdr + hl - k, KID_PLACEHOLDER, 16)); k += 16)
    memcpy(k, kid, 16);
  char *h = b64(hdr, hl), *p = b64(nul + 1, pl);
  free(hdr);
  size_t signed_len = strlen(h) + 1 + strlen(p);
  char *jwt = malloc(signed_len + 1 + 100);
  sprintf(jwt, "%s.%s", h, p);
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_detached(sig, NULL, (unsigned char *)jwt, signed_len, sk);
  bool tamper = data[0] & 2;
  if (tamper) sig[data[0] % sizeof(sig)] ^= 0x40;
  char *s = b64(sig, sizeof(sig));
  sprintf(jwt + signed_len, ".%s", s);
  int rc = auth_token_verify(keys, jwt, NOW, &c);
  if (rc == 0) {
    if (tamper) abort();
    check_claims(&c);
    /* What was accepted once is accepted again, from the cache, with the same claims. */
    auth_claims_t again;
    if (auth_token_verify(keys, jwt, NOW, &again) != 0 || memcmp(&c, &again, sizeof(c)) != 0)
      abort();
    /* and refused once it has expired */
    if (auth_token_verify(keys, jwt, c.exp, &again) == 0) abort();
  }
  free(s);
  free(jwt);
  free(h);
  free(p);
  return 0;
}
