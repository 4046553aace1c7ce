/* Operator console sessions: the cookie a browser holds after signing in with the
 * admin token is a random session id that names an entry here, never the token.
 * The table lives in this process's memory, is bounded (CONSOLE_SESSIONS_MAX;
 * the oldest session gives way to a new one) and each entry expires
 * CONSOLE_SESSION_TTL_MS after sign-in. Any thread may call these; one mutex
 * guards the table. */
#ifndef IOTFIN_SERVICES_CONSOLE_SESSIONS_H
#define IOTFIN_SERVICES_CONSOLE_SESSIONS_H

#include <stdint.h>

#define CONSOLE_SESSIONS_MAX 64
#define CONSOLE_SESSION_TTL_MS (12LL * 3600 * 1000)
/* Session ids and CSRF tokens: 32 random bytes as 64 hex characters. */
#define CONSOLE_SECRET_LEN 64

/* Opens a session at now_ms: fills sid and csrf (CONSOLE_SECRET_LEN + 1 bytes
 * each) and *expires_ms. Returns 0. */
int console_sessions_create(int64_t now_ms, char *sid, char *csrf, int64_t *expires_ms);
/* 0 and the session's csrf token and expiry (either may be NULL) when sid names a
 * live session at now_ms; -ERR_UNAUTHENTICATED otherwise. */
int console_sessions_check(const char *sid, int64_t now_ms, char *csrf, int64_t *expires_ms);
/* Ends the session sid names, if any. */
void console_sessions_delete(const char *sid);

#endif
