/* Certificate and key checks with OpenSSL (see tls.h). The servers themselves
 * (libmicrohttpd with GnuTLS, mosquitto with OpenSSL) load the files again; this only
 * makes sure they will succeed, and says which file is wrong when they would not. */
#include "core/tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void ssl_reason(char *why, size_t cap, const char *what) {
  unsigned long e = ERR_get_error();
  char buf[256] = "";
  if (e) ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  snprintf(why, cap, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

int tls_check_pair(const char *cert_path, const char *key_path, char *why, size_t cap) {
  int rc = 0;
  X509 *cert = NULL;
  EVP_PKEY *key = NULL;
  FILE *f = fopen(cert_path, "r");
  if (!f) {
    snprintf(why, cap, "cannot read %s: %s", cert_path, strerror(errno));
    return -1;
  }
  cert = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  if (!cert) {
    ssl_reason(why, cap, "not a PEM certificate");
    return -1;
  }
  f = fopen(key_path, "r");
  if (!f) {
    snprintf(why, cap, "cannot read %s: %s", key_path, strerror(errno));
    rc = -2;
    goto cleanup;
  }
  key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  if (!key) {
    ssl_reason(why, cap, "not a PEM private key (or one with a passphrase)");
    rc = -2;
    goto cleanup;
  }
  if (X509_check_private_key(cert, key) != 1) {
    ERR_clear_error();
    snprintf(why, cap, "the key does not belong to the certificate %s", cert_path);
    rc = -2;
  }
cleanup:
  EVP_PKEY_free(key);
  X509_free(cert);
  return rc;
}

char *tls_read_pem(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return NULL;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 4096 + 1 > cap) {
      char *nb = realloc(buf, cap = cap ? cap * 2 : 8192);
      if (!nb || cap > (1u << 24)) {
        free(nb ? nb : buf);
        fclose(f);
        return NULL;
      }
      buf = nb;
    }
    size_t n = fread(buf + len, 1, 4096, f);
    len += n;
    if (n < 4096) break;
  }
  fclose(f);
  buf[len] = 0;
  return buf;
}
