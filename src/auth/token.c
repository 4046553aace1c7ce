/* JWT signing and verification with Ed25519 keys stored as files in the data dir.
 * Verification is strict: exactly three base64url parts, alg EdDSA, a known kid,
 * iss iotfin, and every claim of the contract present with the right type. */
#include "auth/token.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth/b64url.h"
#include "core/errors.h"
#include "core/jsontext.h"
#include "core/log.h"

#define MAX_KEYS 8
#define KID_LEN 17

typedef struct {
  char kid[KID_LEN];
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
  unsigned char sk[crypto_sign_SECRETKEYBYTES];
  long long mtime_ns;
  char file[64];
} key_t_;

/* lock guards keys, n and current: readers sign and verify, a rotation writes. */
/* Tokens already verified, keyed by a BLAKE2b hash of the whole token: an app sends
 * the same token with every request, and an Ed25519 verification costs far more
 * than the rest of a read. A hit is as good as a verification because the hash
 * commits to every byte of the token; expiry is still checked on every use. */
#define VERIFIED_SLOTS 4096

typedef struct {
  unsigned char hash[32];
  bool used;
  auth_claims_t claims;
} verified_t;

struct auth_keys {
  pthread_rwlock_t lock;
  /* cache_lock guards cache (separate from lock: hits must not wait for a rotation). */
  pthread_rwlock_t cache_lock;
  verified_t cache[VERIFIED_SLOTS];
  char dir[1024];
  key_t_ keys[MAX_KEYS];
  int n;
  int current; /* index of the newest key, the one that signs */
};

static void make_kid(const unsigned char *pk, char kid[KID_LEN]) {
  unsigned char h[crypto_generichash_BYTES];
  crypto_generichash(h, sizeof(h), pk, crypto_sign_PUBLICKEYBYTES, NULL, 0);
  sodium_bin2hex(kid, KID_LEN, h, 8);
}

static int write_new_key(const char *dir) {
  unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
  crypto_sign_keypair(pk, sk);
  char kid[KID_LEN], path[1200];
  make_kid(pk, kid);
  snprintf(path, sizeof(path), "%s/%s.ed25519", dir, kid);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return -ERR_INTERNAL;
  ssize_t w = write(fd, sk, sizeof(sk));
  int rc = (w == (ssize_t)sizeof(sk) && fsync(fd) == 0) ? 0 : -ERR_INTERNAL;
  close(fd);
  sodium_memzero(sk, sizeof(sk));
  if (rc == 0) log_info("auth", "generated signing key %s", kid);
  return rc;
}

static int read_keys(const char *dir, auth_keys_t *k) {
  DIR *d = opendir(dir);
  if (!d) return -ERR_INTERNAL;
  struct dirent *e;
  k->n = 0;
  while ((e = readdir(d)) && k->n < MAX_KEYS) {
    size_t len = strlen(e->d_name);
    if (len < 9 || strcmp(e->d_name + len - 8, ".ed25519") != 0) continue;
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    int fd = open(path, O_RDONLY);
    if (fd < 0) continue;
    key_t_ *key = &k->keys[k->n];
    struct stat st;
    ssize_t r = read(fd, key->sk, sizeof(key->sk));
    int ok = r == (ssize_t)sizeof(key->sk) && fstat(fd, &st) == 0;
    close(fd);
    if (!ok) {
      log_warn("auth", "ignoring unreadable key file %s", e->d_name);
      continue;
    }
    crypto_sign_ed25519_sk_to_pk(key->pk, key->sk);
    make_kid(key->pk, key->kid);
    key->mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    snprintf(key->file, sizeof(key->file), "%s", e->d_name);
    k->n++;
  }
  closedir(d);
  k->current = 0;
  for (int i = 1; i < k->n; i++)
    if (k->keys[i].mtime_ns > k->keys[k->current].mtime_ns) k->current = i;
  return k->n > 0 ? 0 : -ERR_INTERNAL;
}

int auth_keys_load(const char *dir, auth_keys_t **out) {
  *out = NULL;
  if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
    log_error("auth", "cannot create key folder %s: %s", dir, strerror(errno));
    return -ERR_INTERNAL;
  }
  auth_keys_t *k = sodium_malloc(sizeof(*k));
  if (!k) return -ERR_INTERNAL;
  memset(k, 0, sizeof(*k));
  pthread_rwlock_init(&k->lock, NULL);
  pthread_rwlock_init(&k->cache_lock, NULL);
  snprintf(k->dir, sizeof(k->dir), "%s", dir);
  if (read_keys(dir, k) < 0 && (write_new_key(dir) < 0 || read_keys(dir, k) < 0)) {
    log_error("auth", "no usable signing key in %s", dir);
    sodium_free(k);
    return -ERR_INTERNAL;
  }
  *out = k;
  return 0;
}

static void forget_verified(auth_keys_t *k);

int auth_keys_rotate(auth_keys_t *k, int64_t keep_s, char kid_out[17]) {
  pthread_rwlock_wrlock(&k->lock);
  int rc = write_new_key(k->dir);
  if (rc == 0) rc = read_keys(k->dir, k);
  if (rc == 0) {
    /* A key stopped signing when the next newer key appeared; once every token it
     * signed has expired (keep_s later) it is no longer needed to verify. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long now_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    for (int i = 0; i < k->n; i++) {
      long long successor = 0;
      for (int j = 0; j < k->n; j++)
        if (k->keys[j].mtime_ns > k->keys[i].mtime_ns &&
            (!successor || k->keys[j].mtime_ns < successor))
          successor = k->keys[j].mtime_ns;
      if (successor && now_ns - successor > keep_s * 1000000000LL) {
        char path[1200];
        snprintf(path, sizeof(path), "%s/%s", k->dir, k->keys[i].file);
        if (unlink(path) == 0) log_info("auth", "retired signing key %s", k->keys[i].kid);
      }
    }
    rc = read_keys(k->dir, k);
    if (rc == 0) snprintf(kid_out, 17, "%s", k->keys[k->current].kid);
  }
  pthread_rwlock_unlock(&k->lock);
  forget_verified(k); /* a retired key must not live on in verified tokens */
  return rc;
}

static void forget_verified(auth_keys_t *k) {
  pthread_rwlock_wrlock(&k->cache_lock);
  for (int i = 0; i < VERIFIED_SLOTS; i++)
    k->cache[i].used = false;
  pthread_rwlock_unlock(&k->cache_lock);
}

int auth_keys_set(auth_keys_t *k, const unsigned char (*sk)[64], const int64_t *created_ms, int n) {
  if (n < 1 || n > MAX_KEYS) return -ERR_INTERNAL;
  pthread_rwlock_wrlock(&k->lock);
  for (int i = 0; i < n; i++) {
    key_t_ *key = &k->keys[i];
    memcpy(key->sk, sk[i], sizeof(key->sk));
    crypto_sign_ed25519_sk_to_pk(key->pk, key->sk);
    make_kid(key->pk, key->kid);
    key->mtime_ns = (long long)created_ms[i] * 1000000LL;
    key->file[0] = 0;
  }
  for (int i = n; i < k->n; i++)
    sodium_memzero(&k->keys[i], sizeof(k->keys[i]));
  k->n = n;
  k->current = 0;
  for (int i = 1; i < n; i++)
    if (k->keys[i].mtime_ns > k->keys[k->current].mtime_ns ||
        (k->keys[i].mtime_ns == k->keys[k->current].mtime_ns &&
         strcmp(k->keys[i].kid, k->keys[k->current].kid) > 0))
      k->current = i; /* two keys made in one millisecond: every instance picks the same */
  pthread_rwlock_unlock(&k->lock);
  forget_verified(k);
  return 0;
}

int auth_keys_export(const auth_keys_t *ck, unsigned char (*sk)[64], int64_t *created_ms, int max) {
  auth_keys_t *k = (auth_keys_t *)ck;
  pthread_rwlock_rdlock(&k->lock);
  int n = k->n < max ? k->n : max;
  for (int i = 0; i < n; i++) {
    memcpy(sk[i], k->keys[i].sk, 64);
    created_ms[i] = k->keys[i].mtime_ns / 1000000LL;
  }
  pthread_rwlock_unlock(&k->lock);
  return n;
}

void auth_keys_free(auth_keys_t **keys) {
  if (!*keys) return;
  pthread_rwlock_destroy(&(*keys)->lock);
  pthread_rwlock_destroy(&(*keys)->cache_lock);
  sodium_free(*keys);
  *keys = NULL;
}

json_t *auth_keys_jwks(const auth_keys_t *ckeys) {
  auth_keys_t *keys = (auth_keys_t *)ckeys;
  pthread_rwlock_rdlock(&keys->lock);
  json_t *arr = json_array();
  for (int i = 0; i < keys->n; i++) {
    char *x = auth_b64url_encode(keys->keys[i].pk, sizeof(keys->keys[i].pk));
    json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "kty", "OKP", "crv",
                                         "Ed25519", "x", x, "kid", keys->keys[i].kid, "alg",
                                         "EdDSA", "use", "sig"));
    free(x);
  }
  pthread_rwlock_unlock(&keys->lock);
  return json_pack("{s:o}", "keys", arr);
}

int auth_token_sign(const auth_keys_t *ckeys, const auth_claims_t *c, char **out) {
  *out = NULL;
  auth_keys_t *keys = (auth_keys_t *)ckeys;
  pthread_rwlock_rdlock(&keys->lock);
  const key_t_ *key = &keys->keys[keys->current];
  json_t *hdr = json_pack("{s:s,s:s,s:s}", "alg", "EdDSA", "typ", "JWT", "kid", key->kid);
  json_t *pl = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:s}", "iss", "iotfin", "sub", c->sub, "sid",
                         c->sid, "tier", c->tier, "iat", (json_int_t)c->iat, "exp",
                         (json_int_t)c->exp, "jti", c->jti);
  char *hs = json_text(hdr, NULL), *ps = json_text(pl, NULL);
  json_decref(hdr);
  json_decref(pl);
  char *h64 = hs ? auth_b64url_encode(hs, strlen(hs)) : NULL,
       *p64 = ps ? auth_b64url_encode(ps, strlen(ps)) : NULL;
  int rc = -ERR_INTERNAL;
  if (h64 && p64) {
    size_t signed_len = strlen(h64) + 1 + strlen(p64);
    char *jwt = malloc(signed_len + 1 + 100);
    if (jwt) {
      sprintf(jwt, "%s.%s", h64, p64);
      unsigned char sig[crypto_sign_BYTES];
      crypto_sign_detached(sig, NULL, (unsigned char *)jwt, signed_len, key->sk);
      char *s64 = auth_b64url_encode(sig, sizeof(sig));
      if (s64) {
        jwt[signed_len] = '.';
        strcpy(jwt + signed_len + 1, s64);
        free(s64);
        *out = jwt;
        rc = 0;
      } else {
        free(jwt);
      }
    }
  }
  pthread_rwlock_unlock(&keys->lock);
  free(hs);
  free(ps);
  free(h64);
  free(p64);
  return rc;
}

/* Decodes one base64url part into a malloc'd, NUL-terminated buffer. */
static int copy_claim(json_t *pl, const char *name, char *dst, size_t cap) {
  const char *v = json_string_value(json_object_get(pl, name));
  if (!v || strlen(v) >= cap) return -1;
  strcpy(dst, v);
  return 0;
}

static int verify_full(const auth_keys_t *keys, const char *jwt, int64_t now_s, auth_claims_t *c);

int auth_token_verify(const auth_keys_t *ckeys, const char *jwt, int64_t now_s, auth_claims_t *c) {
  memset(c, 0, sizeof(*c));
  if (!jwt || strlen(jwt) > 4096) return -ERR_UNAUTHENTICATED;
  auth_keys_t *keys = (auth_keys_t *)ckeys;
  unsigned char h[32];
  crypto_generichash(h, sizeof(h), (const unsigned char *)jwt, strlen(jwt), NULL, 0);
  unsigned slot = ((unsigned)h[0] | (unsigned)h[1] << 8) % VERIFIED_SLOTS;
  pthread_rwlock_rdlock(&keys->cache_lock);
  verified_t *v = &keys->cache[slot];
  bool hit = v->used && sodium_memcmp(v->hash, h, sizeof(h)) == 0;
  if (hit) *c = v->claims;
  pthread_rwlock_unlock(&keys->cache_lock);
  if (hit) {
    if (c->exp > now_s) return 0;
    memset(c, 0, sizeof(*c));
    return -ERR_UNAUTHENTICATED;
  }
  int rc = verify_full(keys, jwt, now_s, c);
  if (rc == 0) {
    pthread_rwlock_wrlock(&keys->cache_lock);
    memcpy(v->hash, h, sizeof(h));
    v->claims = *c;
    v->used = true;
    pthread_rwlock_unlock(&keys->cache_lock);
  }
  return rc;
}

static int verify_full(const auth_keys_t *keys, const char *jwt, int64_t now_s, auth_claims_t *c) {
  const char *d1 = strchr(jwt, '.');
  const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
  if (!d1 || !d2 || strchr(d2 + 1, '.')) return -ERR_UNAUTHENTICATED;

  int rc = -ERR_UNAUTHENTICATED;
  size_t hl, pl_len, sl;
  unsigned char *hdr = auth_b64url_decode(jwt, (size_t)(d1 - jwt), &hl);
  unsigned char *pay = auth_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &pl_len);
  unsigned char *sig = auth_b64url_decode(d2 + 1, strlen(d2 + 1), &sl);
  json_t *h = hdr ? json_loadb((char *)hdr, hl, 0, NULL) : NULL;
  json_t *p = pay ? json_loadb((char *)pay, pl_len, 0, NULL) : NULL;
  if (!h || !p || !sig || sl != crypto_sign_BYTES) goto cleanup;
  const char *alg = json_string_value(json_object_get(h, "alg"));
  const char *kid = json_string_value(json_object_get(h, "kid"));
  if (!alg || strcmp(alg, "EdDSA") != 0 || !kid) goto cleanup;
  auth_keys_t *kk = (auth_keys_t *)keys;
  pthread_rwlock_rdlock(&kk->lock);
  const key_t_ *key = NULL;
  for (int i = 0; i < keys->n; i++)
    if (strcmp(keys->keys[i].kid, kid) == 0) key = &keys->keys[i];
  bool good = key && crypto_sign_verify_detached(sig, (const unsigned char *)jwt,
                                                 (size_t)(d2 - jwt), key->pk) == 0;
  pthread_rwlock_unlock(&kk->lock);
  if (!good) goto cleanup;
  const char *iss = json_string_value(json_object_get(p, "iss"));
  json_t *iat = json_object_get(p, "iat"), *exp = json_object_get(p, "exp");
  if (!iss || strcmp(iss, "iotfin") != 0 || !json_is_integer(iat) || !json_is_integer(exp))
    goto cleanup;
  if (copy_claim(p, "sub", c->sub, sizeof(c->sub)) ||
      copy_claim(p, "sid", c->sid, sizeof(c->sid)) ||
      copy_claim(p, "tier", c->tier, sizeof(c->tier)) ||
      copy_claim(p, "jti", c->jti, sizeof(c->jti)))
    goto cleanup;
  c->iat = json_integer_value(iat);
  c->exp = json_integer_value(exp);
  if (c->exp <= now_s) goto cleanup;
  rc = 0;

cleanup:
  json_decref(h);
  json_decref(p);
  free(hdr);
  free(pay);
  free(sig);
  if (rc < 0) memset(c, 0, sizeof(*c));
  return rc;
}
