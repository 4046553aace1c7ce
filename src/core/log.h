/* Structured logging: one JSON object per line on standard error, so operators can
 * grep by hand and ship logs to any collector. Thread-safe; one write(2) a line.
 * Each call site may write at most 10 lines a second; what it could not write is
 * counted and reported in one later line, "... (suppressed N similar lines in the
 * last S s)", with a "suppressed" field. The limiter's memory is a fixed table. */
#ifndef IOTFIN_CORE_LOG_H
#define IOTFIN_CORE_LOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

/* Sets the lowest level written (default LOG_INFO; IOTFIN_LOG_LEVEL=debug lowers it). */
void log_set_level(log_level_t level);

/* Writes {"time","level","module","msg", ...fields}, unless its call site (module
 * and format) is over its budget. fields may be NULL; it is borrowed, not stolen.
 * Safe from any thread. */
void log_write(log_level_t level, const char *module, json_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* True when lines of this level are written. */
bool log_enabled(log_level_t level);
/* Writes an already formatted line (ending in a newline) with one write(2); not
 * rate limited by itself (see log_admit). */
void log_raw(const char *line, size_t len);

/* The rate limiter on its own, for lines written with log_raw: true when a line
 * from (module, site, variant) may be written now; otherwise it is counted, and
 * msg (a short description) goes into the summary. site and module are compared by
 * address (string literals, route table entries). Any thread. */
bool log_admit(log_level_t level, const char *module, const void *site, int variant,
               const char *msg);
/* Writes the summary of every call site whose storm ended (quiet for 1 s) or has
 * gone on for 10 s since its last summary. log_write does this by itself at most
 * once a second; the HTTP timer thread calls it every second so that a storm that
 * stops is always summarised. */
void log_flush_suppressed(void);

/* For unit tests: replaces the limiter's monotonic clock (NULL restores it) and
 * forgets every budget. */
void log__set_clock(int64_t (*now_ms)(void));

#define log_info(mod, ...) log_write(LOG_INFO, mod, NULL, __VA_ARGS__)
#define log_warn(mod, ...) log_write(LOG_WARN, mod, NULL, __VA_ARGS__)
#define log_error(mod, ...) log_write(LOG_ERROR, mod, NULL, __VA_ARGS__)
#define log_debug(mod, ...) log_write(LOG_DEBUG, mod, NULL, __VA_ARGS__)

#endif
