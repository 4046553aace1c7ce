/* base64url (no padding) shared by the token signer, the verifier and the Mosquitto
 * plugin, which is a separate shared object and cannot link iotfin's library:
 * hence a header with static functions rather than a module. */
#ifndef IOTFIN_AUTH_B64URL_H
#define IOTFIN_AUTH_B64URL_H

#include <sodium.h>
#include <stdlib.h>

/* Decodes exactly len characters of s into a malloc'd, NUL-terminated buffer and
 * writes its length to *outlen; NULL when s is not strict base64url. */
static inline unsigned char *auth_b64url_decode(const char *s, size_t len, size_t *outlen) {
  unsigned char *buf = malloc(len + 1);
  const char *end;
  if (!buf) return NULL;
  if (sodium_base642bin(buf, len, s, len, NULL, outlen, &end,
                        sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
      end != s + len) {
    free(buf);
    return NULL;
  }
  buf[*outlen] = 0;
  return buf;
}

/* Encodes len bytes of data into a malloc'd, NUL-terminated string; NULL when out of
 * memory. What libsodium's sodium_bin2base64 writes, by a table: a token's parts
 * are public, so its constant-time encoder (a tenth of a token's signing cost here)
 * buys nothing. */
static inline char *auth_b64url_encode(const void *data, size_t len) {
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const unsigned char *in = data;
  char *out = malloc(len / 3 * 4 + 4), *o = out;
  if (!out) return NULL;
  size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
    *o++ = abc[v >> 18];
    *o++ = abc[v >> 12 & 63];
    *o++ = abc[v >> 6 & 63];
    *o++ = abc[v & 63];
  }
  if (len - i == 1) {
    *o++ = abc[in[i] >> 2];
    *o++ = abc[(in[i] & 3) << 4];
  } else if (len - i == 2) {
    unsigned v = (unsigned)in[i] << 8 | in[i + 1];
    *o++ = abc[v >> 10];
    *o++ = abc[v >> 4 & 63];
    *o++ = abc[(v & 15) << 2];
  }
  *o = 0;
  return out;
}

#endif
