/* Structured logging: one JSON object per line on standard error, so operators can
 * grep by hand and ship logs to any collector. Thread-safe; one write(2) a line. */
#ifndef IOTFIN_CORE_LOG_H
#define IOTFIN_CORE_LOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

/* Sets the lowest level written (default LOG_INFO; IOTFIN_LOG_LEVEL=debug lowers it). */
void log_set_level(log_level_t level);

/* Writes {"time","level","module","msg", ...fields}. fields may be NULL; it is
 * borrowed, not stolen. Safe from any thread. */
void log_write(log_level_t level, const char *module, json_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* True when lines of this level are written. */
bool log_enabled(log_level_t level);
/* Writes an already formatted line (ending in a newline) with one write(2). */
void log_raw(const char *line, size_t len);

#define log_info(mod, ...) log_write(LOG_INFO, mod, NULL, __VA_ARGS__)
#define log_warn(mod, ...) log_write(LOG_WARN, mod, NULL, __VA_ARGS__)
#define log_error(mod, ...) log_write(LOG_ERROR, mod, NULL, __VA_ARGS__)
#define log_debug(mod, ...) log_write(LOG_DEBUG, mod, NULL, __VA_ARGS__)

#endif
