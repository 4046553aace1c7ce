/* Operator console sessions: the cookie a browser holds after signing in with the
 * admin token is a random session id that names a row of console_sessions, never
 * the token. The row is found by a hash of the id, so the table never holds what
 * the cookie says. Rows live in the store, so a sign-in on one instance holds on
 * every instance; each process remembers a checked session for at most
 * CONSOLE_RECHECK_MS, so a sign-out anywhere ends it everywhere within that. The
 * table is bounded (CONSOLE_SESSIONS_MAX; the oldest session gives way) and each
 * session expires CONSOLE_SESSION_TTL_MS after sign-in. Any thread. */
#ifndef IOTFIN_SERVICES_CONSOLE_SESSIONS_H
#define IOTFIN_SERVICES_CONSOLE_SESSIONS_H

#include <stdint.h>

#include "store/store.h"

#define CONSOLE_SESSIONS_MAX 64
#define CONSOLE_SESSION_TTL_MS (12LL * 3600 * 1000)
#define CONSOLE_RECHECK_MS 1000
/* Session ids and CSRF tokens: 32 random bytes as 64 hex characters. */
#define CONSOLE_SECRET_LEN 64

/* Opens a session at now_ms: fills sid and csrf (CONSOLE_SECRET_LEN + 1 bytes
 * each) and *expires_ms. Returns 0, or -ERR_UNAVAILABLE when the store is. */
int console_sessions_create(store_t *store, int64_t now_ms, char *sid, char *csrf,
                            int64_t *expires_ms);
/* 0 and the session's csrf token and expiry (either may be NULL) when sid names a
 * live session at now_ms; -ERR_UNAUTHENTICATED otherwise (-ERR_UNAVAILABLE when the
 * store cannot tell). */
int console_sessions_check(store_t *store, const char *sid, int64_t now_ms, char *csrf,
                           int64_t *expires_ms);
/* Ends the session sid names, if any. */
int console_sessions_delete(store_t *store, const char *sid);

#endif
