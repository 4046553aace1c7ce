/* JSON-lines logger. Each line is built in memory and written with one write(2),
 * so lines from different threads never interleave. A storm from one call site
 * (a failing partner, a flood of malformed requests) is cut to LIMIT_PER_S lines
 * a second; the lines left out are counted and reported in one summary line, so
 * the log stays small enough for a disk and still says what happened. */
#include "core/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/jsontext.h"
#include "core/timeutil.h"

#define LIMIT_SLOTS 512
#define LIMIT_PROBE 4
#define LIMIT_PER_S 10
#define SUMMARY_EVERY_MS 10000 /* a storm that goes on is summarised this often */
#define QUIET_MS 1000          /* a storm that stopped is summarised after this */

static log_level_t min_level = LOG_INFO;
static const char *level_names[] = {"debug", "info", "warn", "error"};

/* One call site's budget. Keyed by (module, site, variant) pointers and value. */
typedef struct {
  const char *module;
  const void *site;
  int variant;
  bool used;
  log_level_t level;
  int64_t window_ms; /* start of the current one-second window */
  int count;         /* lines written in that window */
  uint64_t suppressed;
  int64_t first_suppressed_ms, last_ms;
  char last_msg[200]; /* the latest suppressed message, for the summary */
} limit_slot_t;

/* limit_lock guards slots and next_flush_ms. */
static pthread_mutex_t limit_lock = PTHREAD_MUTEX_INITIALIZER;
static limit_slot_t slots[LIMIT_SLOTS];
static int64_t next_flush_ms;
static int64_t (*clock_fn)(void) = time_mono_ms;

void log_set_level(log_level_t level) { min_level = level; }

bool log_enabled(log_level_t level) { return level >= min_level; }

void log__set_clock(int64_t (*now_ms)(void)) {
  pthread_mutex_lock(&limit_lock);
  clock_fn = now_ms ? now_ms : time_mono_ms;
  memset(slots, 0, sizeof(slots));
  next_flush_ms = 0;
  pthread_mutex_unlock(&limit_lock);
}

void log_raw(const char *line, size_t len) {
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}

static void emit(log_level_t level, const char *module, const char *msg, json_t *fields) {
  char ts[32];
  time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
  json_t *o = json_object();
  json_object_set_new(o, "time", json_string(ts));
  json_object_set_new(o, "level", json_string(level_names[level]));
  json_object_set_new(o, "module", json_string(module));
  json_object_set_new(o, "msg", json_string(msg));
  if (fields) json_object_update(o, fields);
  char *line = json_text(o, NULL);
  json_decref(o);
  if (!line) return;
  size_t n = strlen(line);
  char *buf = malloc(n + 1);
  if (buf) {
    memcpy(buf, line, n);
    buf[n] = '\n';
    log_raw(buf, n + 1);
    free(buf);
  }
  free(line);
}

/* Caller must hold limit_lock. Writes the slot's summary line and resets it. */
static void summarise(limit_slot_t *s, int64_t now) {
  if (!s->suppressed) return;
  long secs = (long)((now - s->first_suppressed_ms + 999) / 1000);
  if (secs < 1) secs = 1;
  char msg[320];
  snprintf(msg, sizeof(msg), "%s (suppressed %llu similar lines in the last %ld s)", s->last_msg,
           (unsigned long long)s->suppressed, secs);
  json_t *f = json_pack("{s:I}", "suppressed", (json_int_t)s->suppressed);
  emit(s->level, s->module, msg, f);
  json_decref(f);
  s->suppressed = 0;
}

/* Caller must hold limit_lock. */
static void flush_locked(int64_t now) {
  for (int i = 0; i < LIMIT_SLOTS; i++) {
    limit_slot_t *s = &slots[i];
    if (s->used && s->suppressed &&
        (now - s->first_suppressed_ms >= SUMMARY_EVERY_MS || now - s->last_ms >= QUIET_MS))
      summarise(s, now);
  }
  next_flush_ms = now + QUIET_MS;
}

void log_flush_suppressed(void) {
  pthread_mutex_lock(&limit_lock);
  flush_locked(clock_fn());
  pthread_mutex_unlock(&limit_lock);
}

bool log_admit(log_level_t level, const char *module, const void *site, int variant,
               const char *msg) {
  uintptr_t h =
      ((uintptr_t)module * 31u) ^ ((uintptr_t)site >> 3) ^ ((uintptr_t)variant * 2654435761u);
  h ^= h >> 16;
  pthread_mutex_lock(&limit_lock);
  int64_t now = clock_fn();
  limit_slot_t *s = NULL, *oldest = NULL;
  for (int p = 0; p < LIMIT_PROBE; p++) {
    limit_slot_t *c = &slots[(h + (uintptr_t)p) % LIMIT_SLOTS];
    if (c->used && c->module == module && c->site == site && c->variant == variant) {
      s = c;
      break;
    }
    if (!c->used) {
      if (!oldest || oldest->used) oldest = c;
    } else if (!oldest || (oldest->used && c->last_ms < oldest->last_ms)) {
      oldest = c;
    }
  }
  if (!s) {
    /* Taking over a slot: its pending count is reported first, never lost. */
    s = oldest;
    if (s->used) summarise(s, now);
    *s = (limit_slot_t){
        .module = module, .site = site, .variant = variant, .used = true, .window_ms = now};
  }
  s->level = level;
  if (now - s->window_ms >= 1000) {
    s->window_ms = now;
    s->count = 0;
  }
  bool ok = s->count < LIMIT_PER_S;
  if (ok) {
    s->count++;
  } else {
    if (!s->suppressed) s->first_suppressed_ms = now;
    s->suppressed++;
    snprintf(s->last_msg, sizeof(s->last_msg), "%s", msg);
  }
  s->last_ms = now;
  if (now >= next_flush_ms) flush_locked(now);
  pthread_mutex_unlock(&limit_lock);
  return ok;
}

void log_write(log_level_t level, const char *module, json_t *fields, const char *fmt, ...) {
  if (level < min_level) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  /* The format string's address stands for the call site. */
  if (!log_admit(level, module, fmt, 0, msg)) return;
  emit(level, module, msg, fields);
}
