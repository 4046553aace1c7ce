/* base64url (no padding) decoding shared by the token verifier and the Mosquitto
 * plugin, which is a separate shared object and cannot link iotfin's library:
 * hence a header with a static function rather than a module. */
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

#endif
