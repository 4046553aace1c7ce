/* Per-client rate limit for the session and registration routes: a token bucket
 * per client address, refilled at `per_minute` tokens a minute, holding at most
 * `per_minute`. Thread-safe; a fixed table, so memory does not grow with clients. */
#ifndef IOTFIN_HTTP_RATELIMIT_H
#define IOTFIN_HTTP_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

/* Takes one token for key at now_ms. Returns true when allowed; otherwise false
 * and *retry_after_s = seconds until a token is back (at least 1). */
bool http_ratelimit_take(const char *key, long per_minute, int64_t now_ms, int *retry_after_s);
/* Forgets every bucket (tests). */
void http_ratelimit_reset(void);

#endif
