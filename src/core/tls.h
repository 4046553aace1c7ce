/* Checks a TLS certificate and key before anything listens with them, so a wrong
 * file is a bad setting at start (one line naming it), not a failed handshake later. */
#ifndef IOTFIN_CORE_TLS_H
#define IOTFIN_CORE_TLS_H

#include <stddef.h>

/* Reads the PEM certificate at cert_path and the PEM private key at key_path and checks
 * that the key belongs to the certificate. Returns 0; or -1 for the certificate and -2
 * for the key, with the reason in why. Any thread. */
int tls_check_pair(const char *cert_path, const char *key_path, char *why, size_t cap);

/* Reads a whole file into a malloc'd NUL-terminated string; NULL on failure. */
char *tls_read_pem(const char *path);

#endif
