/* Wall-clock and monotonic time in milliseconds, and RFC 3339 formatting with
 * milliseconds in UTC, the one timestamp format of the contract. */
#ifndef IOTFIN_CORE_TIMEUTIL_H
#define IOTFIN_CORE_TIMEUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Milliseconds since the Unix epoch (wall clock). */
int64_t time_now_ms(void);
/* Milliseconds from an arbitrary origin that never goes back (for timeouts). */
int64_t time_mono_ms(void);
/* The CLOCK_REALTIME instant ms from now, as pthread_cond_timedwait takes it (ms <= 0:
 * now). */
void time_deadline(int64_t ms, struct timespec *out);
/* Writes e.g. 2026-11-27T07:00:00.123Z; buf needs 25 bytes. Returns buf. */
char *time_format_rfc3339(int64_t ms, char *buf, size_t cap);
/* True when s is an RFC 3339 date-time (2026-11-27T07:00:00Z, fraction and offset
 * optional, calendar checked): the one form a device event's time may take. */
bool time_is_rfc3339(const char *s);

#endif
