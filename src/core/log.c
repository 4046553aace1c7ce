/* JSON-lines logger. Each line is built in memory and written with one write(2),
 * so lines from different threads never interleave. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/timeutil.h"

static log_level_t min_level = LOG_INFO;
static const char *level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(log_level_t level) { min_level = level; }

bool log_enabled(log_level_t level) { return level >= min_level; }

void log_raw(const char *line, size_t len) {
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}

void log_write(log_level_t level, const char *module, json_t *fields, const char *fmt, ...) {
  if (level < min_level) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);

  char ts[32];
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  json_t *o = json_object();
  json_object_set_new(o, "time", json_string(ts));
  json_object_set_new(o, "level", json_string(level_names[level]));
  json_object_set_new(o, "module", json_string(module));
  json_object_set_new(o, "msg", json_string(msg));
  if (fields) json_object_update(o, fields);
  char *line = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  if (!line) return;
  size_t n = strlen(line);
  char *buf = malloc(n + 1);
  if (buf) {
    memcpy(buf, line, n);
    buf[n] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, n + 1);
    (void)w;
    free(buf);
  }
  free(line);
}
