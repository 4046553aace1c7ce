/* Unit tests for src/auth/token.c: Ed25519 keys kept as files in a fresh mkdtemp
 * folder, JWT sign/verify, the refusals verification must make, and the JWKS. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth/b64url.h"
#include "auth/token.h"
#include "core/errors.h"

#define NOW 1800000000LL

typedef struct {
  char root[64]; /* the mkdtemp folder */
  char dir[128]; /* root/keys, created by auth_keys_load */
  auth_keys_t *keys;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  if (!f) return -1;
  strcpy(f->root, "/tmp/iotfin-token-XXXXXX");
  if (!mkdtemp(f->root)) return -1;
  snprintf(f->dir, sizeof(f->dir), "%s/keys", f->root);
  if (auth_keys_load(f->dir, &f->keys) != 0) return -1;
  *state = f;
  return 0;
}

/* Removes root and everything below it (two levels are all the tests create). */
static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char p[512];
      snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
      struct stat st;
      if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
        remove_tree(p);
      else
        unlink(p);
    }
    closedir(d);
  }
  rmdir(path);
}

static int teardown(void **state) {
  fixture_t *f = *state;
  auth_keys_free(&f->keys);
  remove_tree(f->root);
  free(f);
  return 0;
}

static auth_claims_t sample_claims(void) {
  auth_claims_t c = {0};
  strcpy(c.sub, "0193a1b2-0000-7000-8000-000000000001");
  strcpy(c.sid, "0193a1b2-0000-7000-8000-000000000002");
  strcpy(c.tier, "user");
  strcpy(c.jti, "jti-123");
  c.iat = NOW;
  c.exp = NOW + 900;
  return c;
}

static char *sign(const fixture_t *f, const auth_claims_t *c) {
  char *jwt = NULL;
  assert_int_equal(auth_token_sign(f->keys, c, &jwt), 0);
  assert_non_null(jwt);
  return jwt;
}

/* Decodes one base64url part into a JSON object (caller decrefs). */
static json_t *decode_part(const char *s, size_t len) {
  unsigned char buf[1024];
  size_t n = 0;
  if (sodium_base642bin(buf, sizeof(buf), s, len, NULL, &n, NULL,
                        sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
    return NULL;
  return json_loadb((const char *)buf, n, 0, NULL);
}

/* Reads the fixture's one secret key from its file, so tests can sign tokens that
 * are genuinely signed yet break some other rule. */
static void read_secret_key(const fixture_t *f, unsigned char sk[crypto_sign_SECRETKEYBYTES]) {
  DIR *d = opendir(f->dir);
  assert_non_null(d);
  struct dirent *e;
  int have = 0;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len < 8 || strcmp(e->d_name + len - 8, ".ed25519") != 0) continue;
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", f->dir, e->d_name);
    FILE *fp = fopen(p, "rb");
    assert_non_null(fp);
    have = fread(sk, 1, crypto_sign_SECRETKEYBYTES, fp) == crypto_sign_SECRETKEYBYTES;
    fclose(fp);
  }
  closedir(d);
  assert_true(have);
}

/* base64url(header_json).base64url(payload_json).base64url(Ed25519 signature by sk);
 * the caller frees it. */
static char *forge_signed(const char *header_json, const char *payload_json,
                          const unsigned char *sk) {
  char h[1024], p[1024], s64[128];
  sodium_bin2base64(h, sizeof(h), (const unsigned char *)header_json, strlen(header_json),
                    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  sodium_bin2base64(p, sizeof(p), (const unsigned char *)payload_json, strlen(payload_json),
                    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  size_t signed_len = strlen(h) + 1 + strlen(p);
  char *out = malloc(signed_len + 1 + sizeof(s64));
  assert_non_null(out);
  sprintf(out, "%s.%s", h, p);
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_detached(sig, NULL, (const unsigned char *)out, signed_len, sk);
  sodium_bin2base64(s64, sizeof(s64), sig, sizeof(sig), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  out[signed_len] = '.';
  strcpy(out + signed_len + 1, s64);
  return out;
}

static const char *good_payload = "{\"iss\":\"iotfin\",\"sub\":\"u\",\"sid\":\"s\","
                                  "\"tier\":\"user\",\"iat\":1,\"exp\":9999999999,"
                                  "\"jti\":\"j\"}";

static void expect_refused(const fixture_t *f, const char *jwt) {
  auth_claims_t c;
  memset(&c, 'x', sizeof(c));
  assert_int_equal(auth_token_verify(f->keys, jwt, NOW, &c), -ERR_UNAUTHENTICATED);
  /* Nothing of a refused token leaks into the claims. */
  assert_string_equal(c.sub, "");
  assert_string_equal(c.tier, "");
  assert_int_equal(c.exp, 0);
}

static void test_key_file_is_private(void **state) {
  fixture_t *f = *state;
  struct stat st;
  assert_int_equal(stat(f->dir, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  assert_int_equal(st.st_mode & 0777, 0700);

  DIR *d = opendir(f->dir);
  assert_non_null(d);
  int nkeys = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len < 8 || strcmp(e->d_name + len - 8, ".ed25519") != 0) continue;
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", f->dir, e->d_name);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, crypto_sign_SECRETKEYBYTES);
    nkeys++;
  }
  closedir(d);
  assert_int_equal(nkeys, 1);
}

static void test_sign_verify_roundtrip(void **state) {
  fixture_t *f = *state;
  auth_claims_t in = sample_claims(), out;
  char *jwt = sign(f, &in);
  assert_int_equal(auth_token_verify(f->keys, jwt, NOW, &out), 0);
  assert_string_equal(out.sub, in.sub);
  assert_string_equal(out.sid, in.sid);
  assert_string_equal(out.tier, "user");
  assert_string_equal(out.jti, "jti-123");
  assert_int_equal(out.iat, NOW);
  assert_int_equal(out.exp, NOW + 900);
  free(jwt);
}

static void test_token_shape(void **state) {
  fixture_t *f = *state;
  auth_claims_t in = sample_claims();
  char *jwt = sign(f, &in);
  char *d1 = strchr(jwt, '.'), *d2 = strchr(d1 + 1, '.');
  assert_null(strchr(d2 + 1, '.'));
  /* No padding and only the URL-safe alphabet. */
  for (const char *p = jwt; *p; p++)
    assert_non_null(
        strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", *p));

  json_t *hdr = decode_part(jwt, (size_t)(d1 - jwt));
  json_t *pl = decode_part(d1 + 1, (size_t)(d2 - d1 - 1));
  assert_non_null(hdr);
  assert_non_null(pl);
  assert_string_equal(json_string_value(json_object_get(hdr, "alg")), "EdDSA");
  assert_string_equal(json_string_value(json_object_get(hdr, "typ")), "JWT");
  json_t *jwks = auth_keys_jwks(f->keys);
  json_t *k0 = json_array_get(json_object_get(jwks, "keys"), 0);
  assert_string_equal(json_string_value(json_object_get(hdr, "kid")),
                      json_string_value(json_object_get(k0, "kid")));
  /* Every claim of CONTRACT section 3. */
  assert_string_equal(json_string_value(json_object_get(pl, "iss")), "iotfin");
  assert_string_equal(json_string_value(json_object_get(pl, "sub")), in.sub);
  assert_string_equal(json_string_value(json_object_get(pl, "sid")), in.sid);
  assert_string_equal(json_string_value(json_object_get(pl, "tier")), "user");
  assert_string_equal(json_string_value(json_object_get(pl, "jti")), "jti-123");
  assert_true(json_is_integer(json_object_get(pl, "iat")));
  assert_int_equal(json_integer_value(json_object_get(pl, "exp")), NOW + 900);
  json_decref(jwks);
  json_decref(hdr);
  json_decref(pl);
  free(jwt);
}

static void test_expired_refused(void **state) {
  fixture_t *f = *state;
  auth_claims_t in = sample_claims(), out;
  char *jwt = sign(f, &in);
  assert_int_equal(auth_token_verify(f->keys, jwt, NOW + 899, &out), 0);
  assert_int_equal(auth_token_verify(f->keys, jwt, NOW + 900, &out), -ERR_UNAUTHENTICATED);
  assert_int_equal(auth_token_verify(f->keys, jwt, NOW + 100000, &out), -ERR_UNAUTHENTICATED);
  assert_string_equal(out.sub, "");
  free(jwt);
}

static void test_tampered_payload_refused(void **state) {
  fixture_t *f = *state;
  auth_claims_t in = sample_claims();
  char *jwt = sign(f, &in);
  char *d1 = strchr(jwt, '.'), *d2 = strchr(d1 + 1, '.');

  /* Swap the payload for one claiming another tier, keeping header and signature. */
  auth_claims_t other = in;
  strcpy(other.tier, "device");
  char *jwt2 = sign(f, &other);
  char *e1 = strchr(jwt2, '.'), *e2 = strchr(e1 + 1, '.');
  char mixed[2048];
  snprintf(mixed, sizeof(mixed), "%.*s%.*s%s", (int)(d1 - jwt), jwt, (int)(e2 - e1), e1, d2);
  expect_refused(f, mixed);

  /* Flip one character in the middle of the payload. */
  char *t = strdup(jwt);
  size_t mid = (size_t)(d1 - jwt) + 1 + (size_t)(d2 - d1 - 1) / 2;
  t[mid] = t[mid] == 'A' ? 'B' : 'A';
  expect_refused(f, t);
  free(t);
  free(jwt2);
  free(jwt);
}

static void test_tampered_signature_refused(void **state) {
  fixture_t *f = *state;
  auth_claims_t in = sample_claims();
  char *jwt = sign(f, &in);
  char *d2 = strrchr(jwt, '.');
  char *t = strdup(jwt);
  char *s = t + (d2 - jwt) + 1;
  s[5] = s[5] == 'A' ? 'B' : 'A';
  expect_refused(f, t);
  /* A truncated signature (fewer than 64 bytes) is refused too. */
  free(t);
  t = strdup(jwt);
  t[strlen(t) - 4] = 0;
  expect_refused(f, t);
  /* And one with no signature at all. */
  free(t);
  t = strdup(jwt);
  t[(d2 - jwt) + 1] = 0;
  expect_refused(f, t);
  free(t);
  free(jwt);
}

/* The real header with its kid, to forge variants of. */
static void real_kid(const fixture_t *f, char *kid, size_t cap) {
  json_t *jwks = auth_keys_jwks(f->keys);
  const char *k =
      json_string_value(json_object_get(json_array_get(json_object_get(jwks, "keys"), 0), "kid"));
  snprintf(kid, cap, "%s", k);
  json_decref(jwks);
}

static void test_wrong_alg_refused(void **state) {
  fixture_t *f = *state;
  unsigned char sk[crypto_sign_SECRETKEYBYTES];
  read_secret_key(f, sk);
  char kid[64], hdr[256];
  real_kid(f, kid, sizeof(kid));
  auth_claims_t c;

  /* Control: the forging path with alg EdDSA is accepted. */
  snprintf(hdr, sizeof(hdr), "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
  char *t = forge_signed(hdr, good_payload, sk);
  assert_int_equal(auth_token_verify(f->keys, t, NOW, &c), 0);
  free(t);

  /* Genuinely signed by our key, but declaring another algorithm (or none). */
  const char *algs[] = {"none", "HS256", "ES256", "eddsa", "Ed25519", ""};
  for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", algs[i], kid);
    t = forge_signed(hdr, good_payload, sk);
    expect_refused(f, t);
    free(t);
  }
  snprintf(hdr, sizeof(hdr), "{\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
  t = forge_signed(hdr, good_payload, sk);
  expect_refused(f, t);
  free(t);
  snprintf(hdr, sizeof(hdr), "{\"alg\":7,\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
  t = forge_signed(hdr, good_payload, sk);
  expect_refused(f, t);
  free(t);

  /* The alg=none form with an empty signature. */
  auth_claims_t in = sample_claims();
  char *jwt = sign(f, &in);
  snprintf(hdr, sizeof(hdr), "{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
  char h64[512], none[2048];
  sodium_bin2base64(h64, sizeof(h64), (const unsigned char *)hdr, strlen(hdr),
                    sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  const char *d1 = strchr(jwt, '.'), *d2 = strrchr(jwt, '.');
  snprintf(none, sizeof(none), "%s%.*s.", h64, (int)(d2 - d1), d1);
  expect_refused(f, none);
  free(jwt);
  sodium_memzero(sk, sizeof(sk));
}

static void test_unknown_kid_refused(void **state) {
  fixture_t *f = *state;
  unsigned char sk[crypto_sign_SECRETKEYBYTES];
  read_secret_key(f, sk);
  /* Signed by the right key, but naming no key we publish. */
  const char *hdrs[] = {"{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"0000000000000000\"}",
                        "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"\"}",
                        "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}",
                        "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":7}"};
  for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
    char *t = forge_signed(hdrs[i], good_payload, sk);
    expect_refused(f, t);
    free(t);
  }
  /* A known kid with a prefix or suffix is another kid. */
  char kid[64], hdr[256];
  real_kid(f, kid, sizeof(kid));
  snprintf(hdr, sizeof(hdr), "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"%sx\"}", kid);
  char *t = forge_signed(hdr, good_payload, sk);
  expect_refused(f, t);
  free(t);
  kid[strlen(kid) - 1] = 0;
  snprintf(hdr, sizeof(hdr), "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
  t = forge_signed(hdr, good_payload, sk);
  expect_refused(f, t);
  free(t);
  sodium_memzero(sk, sizeof(sk));
}

static void test_token_from_other_keys_refused(void **state) {
  fixture_t *f = *state;
  /* A second key folder: a genuine token, but signed by a key we do not know. */
  char other_dir[160];
  snprintf(other_dir, sizeof(other_dir), "%s/other", f->root);
  auth_keys_t *other = NULL;
  assert_int_equal(auth_keys_load(other_dir, &other), 0);
  auth_claims_t in = sample_claims(), out;
  char *jwt = NULL;
  assert_int_equal(auth_token_sign(other, &in, &jwt), 0);
  assert_int_equal(auth_token_verify(other, jwt, NOW, &out), 0);
  expect_refused(f, jwt);
  free(jwt);
  auth_keys_free(&other);
  assert_null(other);
}

static void test_garbage_refused(void **state) {
  fixture_t *f = *state;
  const char *garbage[] = {
      "",
      "abc",
      ".",
      "..",
      "...",
      "a.b",
      "a.b.c",
      "a.b.c.d",
      "!!!.@@@.###",
      "eyJhbGciOiJFZERTQSJ9.e30",
      "eyJhbGciOiJFZERTQSJ9.e30.",
      "eyJhbGciOiJFZERTQSJ9.e30.AAAA",
      "eyJhbGciOiJFZERTQSJ9+.e30.AAAA",  /* '+' is not base64url */
      "eyJhbGciOiJFZERTQSJ9==.e30.AAAA", /* padding is not allowed */
  };
  for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
    expect_refused(f, garbage[i]);
  auth_claims_t c;
  assert_int_equal(auth_token_verify(f->keys, NULL, NOW, &c), -ERR_UNAUTHENTICATED);

  /* A real token with a fourth part appended, and with a part that is not base64. */
  auth_claims_t in = sample_claims();
  char *jwt = sign(f, &in);
  char t[2048];
  snprintf(t, sizeof(t), "%s.%s", jwt, "AAAA");
  expect_refused(f, t);
  snprintf(t, sizeof(t), "%s", jwt);
  t[2] = '*';
  expect_refused(f, t);
  /* Very long input is refused without parsing. */
  size_t big = 10000;
  char *huge = malloc(big + 1);
  memset(huge, 'A', big);
  huge[100] = '.';
  huge[200] = '.';
  huge[big] = 0;
  expect_refused(f, huge);
  free(huge);
  free(jwt);
}

static void test_claims_checked(void **state) {
  fixture_t *f = *state;
  unsigned char sk[crypto_sign_SECRETKEYBYTES];
  read_secret_key(f, sk);
  char kid[64], hdr[256];
  real_kid(f, kid, sizeof(kid));
  snprintf(hdr, sizeof(hdr), "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);

  /* Control: a complete payload is accepted. */
  auth_claims_t c;
  char *t = forge_signed(hdr, good_payload, sk);
  assert_int_equal(auth_token_verify(f->keys, t, NOW, &c), 0);
  assert_string_equal(c.sub, "u");
  assert_string_equal(c.sid, "s");
  free(t);

  /* Correctly signed tokens whose payload breaks one rule each. */
  const char *payloads[] = {
      /* iss missing, iss wrong */
      "{\"sub\":\"u\",\"sid\":\"s\",\"tier\":\"user\",\"iat\":1,\"exp\":9999999999,\"jti\":\"j\"}",
      "{\"iss\":\"evil\",\"sub\":\"u\",\"sid\":\"s\",\"tier\":\"user\",\"iat\":1,"
      "\"exp\":9999999999,\"jti\":\"j\"}",
      /* exp missing, exp a string, iat missing */
      "{\"iss\":\"iotfin\",\"sub\":\"u\",\"sid\":\"s\",\"tier\":\"user\",\"iat\":1,\"jti\":\"j\"}",
      "{\"iss\":\"iotfin\",\"sub\":\"u\",\"sid\":\"s\",\"tier\":\"user\",\"iat\":1,"
      "\"exp\":\"9999999999\",\"jti\":\"j\"}",
      "{\"iss\":\"iotfin\",\"sub\":\"u\",\"sid\":\"s\",\"tier\":\"user\",\"exp\":9999999999,"
      "\"jti\":\"j\"}",
      /* sub, sid, jti missing; tier not a string */
      "{\"iss\":\"iotfin\",\"sid\":\"s\",\"tier\":\"user\",\"iat\":1,\"exp\":9999999999,"
      "\"jti\":\"j\"}",
      "{\"iss\":\"iotfin\",\"sub\":\"u\",\"tier\":\"user\",\"iat\":1,\"exp\":9999999999,"
      "\"jti\":\"j\"}",
      "{\"iss\":\"iotfin\",\"sub\":\"u\",\"sid\":\"s\",\"tier\":\"user\",\"iat\":1,"
      "\"exp\":9999999999}",
      "{\"iss\":\"iotfin\",\"sub\":\"u\",\"sid\":\"s\",\"tier\":3,\"iat\":1,\"exp\":9999999999,"
      "\"jti\":\"j\"}",
      /* a sub longer than the claims buffer holds */
      "{\"iss\":\"iotfin\",\"sub\":"
      "\"0123456789012345678901234567890123456789012345678901234567890123"
      "456789\",\"sid\":\"s\",\"tier\":\"user\",\"iat\":1,\"exp\":9999999999,\"jti\":\"j\"}",
      /* expired, and a payload that is not an object or not JSON */
      "{\"iss\":\"iotfin\",\"sub\":\"u\",\"sid\":\"s\",\"tier\":\"user\",\"iat\":1,\"exp\":2,"
      "\"jti\":\"j\"}",
      "[1,2,3]",
      "not json",
  };
  for (size_t i = 0; i < sizeof(payloads) / sizeof(payloads[0]); i++) {
    t = forge_signed(hdr, payloads[i], sk);
    expect_refused(f, t);
    free(t);
  }
  /* A header that is not JSON, though signed. */
  t = forge_signed("{alg:EdDSA}", good_payload, sk);
  expect_refused(f, t);
  free(t);
  sodium_memzero(sk, sizeof(sk));
}

static void test_reload_gives_same_kid(void **state) {
  fixture_t *f = *state;
  char kid[64];
  real_kid(f, kid, sizeof(kid));
  auth_claims_t in = sample_claims(), out;
  char *jwt = sign(f, &in);

  auth_keys_t *again = NULL;
  assert_int_equal(auth_keys_load(f->dir, &again), 0);
  json_t *jwks = auth_keys_jwks(again);
  json_t *arr = json_object_get(jwks, "keys");
  assert_int_equal(json_array_size(arr), 1); /* no second key was generated */
  assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 0), "kid")), kid);
  /* Tokens signed before the reload still verify, and new ones verify with the old set. */
  assert_int_equal(auth_token_verify(again, jwt, NOW, &out), 0);
  char *jwt2 = NULL;
  assert_int_equal(auth_token_sign(again, &in, &jwt2), 0);
  assert_int_equal(auth_token_verify(f->keys, jwt2, NOW, &out), 0);
  free(jwt2);
  json_decref(jwks);
  auth_keys_free(&again);
  free(jwt);
}

static void test_newest_key_signs(void **state) {
  fixture_t *f = *state;
  char old_kid[64];
  real_kid(f, old_kid, sizeof(old_kid));
  auth_claims_t in = sample_claims(), out;
  char *old_jwt = sign(f, &in);

  /* Drop a second key into the folder, newer than the first. */
  unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
  crypto_sign_keypair(pk, sk);
  char p[512];
  snprintf(p, sizeof(p), "%s/rotated.ed25519", f->dir);
  FILE *fp = fopen(p, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(sk, 1, sizeof(sk), fp), sizeof(sk));
  fclose(fp);
  struct timespec ts[2] = {{.tv_sec = time(NULL) + 100}, {.tv_sec = time(NULL) + 100}};
  assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);

  auth_keys_t *rotated = NULL;
  assert_int_equal(auth_keys_load(f->dir, &rotated), 0);
  json_t *jwks = auth_keys_jwks(rotated);
  assert_int_equal(json_array_size(json_object_get(jwks, "keys")), 2);
  char *new_jwt = NULL;
  assert_int_equal(auth_token_sign(rotated, &in, &new_jwt), 0);
  json_t *hdr = decode_part(new_jwt, (size_t)(strchr(new_jwt, '.') - new_jwt));
  const char *new_kid = json_string_value(json_object_get(hdr, "kid"));
  assert_string_not_equal(new_kid, old_kid);
  /* The new kid is published and both generations verify under the rotated set. */
  bool listed = false;
  size_t i;
  json_t *k;
  json_array_foreach(json_object_get(jwks, "keys"), i, k) {
    if (strcmp(json_string_value(json_object_get(k, "kid")), new_kid) == 0) listed = true;
  }
  assert_true(listed);
  assert_int_equal(auth_token_verify(rotated, old_jwt, NOW, &out), 0);
  assert_int_equal(auth_token_verify(rotated, new_jwt, NOW, &out), 0);
  /* The old set does not know the new key. */
  expect_refused(f, new_jwt);
  json_decref(hdr);
  json_decref(jwks);
  auth_keys_free(&rotated);
  free(new_jwt);
  free(old_jwt);
  sodium_memzero(sk, sizeof(sk));
}

static void test_jwks_shape(void **state) {
  fixture_t *f = *state;
  json_t *jwks = auth_keys_jwks(f->keys);
  assert_true(json_is_object(jwks));
  json_t *arr = json_object_get(jwks, "keys");
  assert_true(json_is_array(arr));
  assert_int_equal(json_array_size(arr), 1);
  json_t *k = json_array_get(arr, 0);
  assert_string_equal(json_string_value(json_object_get(k, "kty")), "OKP");
  assert_string_equal(json_string_value(json_object_get(k, "crv")), "Ed25519");
  assert_string_equal(json_string_value(json_object_get(k, "alg")), "EdDSA");
  const char *kid = json_string_value(json_object_get(k, "kid"));
  assert_non_null(kid);
  assert_true(strlen(kid) > 0);
  /* x is the 32-byte public key, base64url without padding (43 characters). */
  const char *x = json_string_value(json_object_get(k, "x"));
  assert_non_null(x);
  assert_int_equal(strlen(x), 43);
  unsigned char pk[64];
  size_t n = 0;
  assert_int_equal(sodium_base642bin(pk, sizeof(pk), x, strlen(x), NULL, &n, NULL,
                                     sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                   0);
  assert_int_equal(n, crypto_sign_PUBLICKEYBYTES);
  /* No private member may ever be published. */
  assert_null(json_object_get(k, "d"));

  /* x really is the verifying key: check a token's signature with it directly. */
  auth_claims_t in = sample_claims();
  char *jwt = sign(f, &in);
  char *d2 = strrchr(jwt, '.');
  unsigned char sig[crypto_sign_BYTES + 8];
  size_t sl = 0;
  assert_int_equal(sodium_base642bin(sig, sizeof(sig), d2 + 1, strlen(d2 + 1), NULL, &sl, NULL,
                                     sodium_base64_VARIANT_URLSAFE_NO_PADDING),
                   0);
  assert_int_equal(sl, crypto_sign_BYTES);
  assert_int_equal(
      crypto_sign_verify_detached(sig, (const unsigned char *)jwt, (size_t)(d2 - jwt), pk), 0);
  free(jwt);
  json_decref(jwks);
}

/* The table encoder writes what libsodium's encoder writes, for every length up to
 * a few blocks and every byte value, and the decoder reads it back. */
static void test_b64url_encoder_matches_libsodium(void **state) {
  (void)state;
  unsigned char data[200];
  for (size_t i = 0; i < sizeof(data); i++)
    data[i] = (unsigned char)(i * 151 + 7);
  for (size_t len = 0; len <= sizeof(data); len++) {
    char want[300];
    sodium_bin2base64(want, sizeof(want), data, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    char *got = auth_b64url_encode(data, len);
    assert_non_null(got);
    assert_string_equal(got, want);
    size_t back_len = 0;
    unsigned char *back = auth_b64url_decode(got, strlen(got), &back_len);
    assert_non_null(back);
    assert_int_equal(back_len, len);
    assert_memory_equal(back, data, len);
    free(back);
    free(got);
  }
}

static void test_unusable_dir_fails(void **state) {
  (void)state;
  auth_keys_t *k = (auth_keys_t *)1;
  assert_int_equal(auth_keys_load("/nonexistent-iotfin-dir/a/b", &k), -ERR_INTERNAL);
  assert_null(k);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
  if (sodium_init() < 0) return 1;
  const struct CMUnitTest tests[] = {
      T(test_key_file_is_private),
      T(test_sign_verify_roundtrip),
      T(test_token_shape),
      T(test_expired_refused),
      T(test_tampered_payload_refused),
      T(test_tampered_signature_refused),
      T(test_wrong_alg_refused),
      T(test_unknown_kid_refused),
      T(test_token_from_other_keys_refused),
      T(test_garbage_refused),
      T(test_claims_checked),
      T(test_reload_gives_same_kid),
      T(test_newest_key_signs),
      T(test_jwks_shape),
      cmocka_unit_test(test_unusable_dir_fails),
      cmocka_unit_test(test_b64url_encoder_matches_libsodium),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
