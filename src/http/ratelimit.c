/* Token buckets in an open-addressed table of fixed size. When the table is full
 * the least recently used slot of the probe window is reused; a client evicted
 * that way simply starts with a full bucket again. */
#include "http/ratelimit.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define SLOTS 4096
#define PROBE 16

typedef struct {
  char key[64];
  double tokens;
  int64_t last_ms;
} bucket_t;

/* lock guards table. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bucket_t table[SLOTS];

static unsigned hash(const char *s) {
  unsigned h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

bool http_ratelimit_take(const char *key, long per_minute, int64_t now_ms, int *retry_after_s) {
  pthread_mutex_lock(&lock);
  unsigned h = hash(key);
  bucket_t *b = NULL, *oldest = NULL;
  for (int i = 0; i < PROBE; i++) {
    bucket_t *c = &table[(h + (unsigned)i) % SLOTS];
    if (strcmp(c->key, key) == 0) {
      b = c;
      break;
    }
    if (!oldest || c->last_ms < oldest->last_ms) oldest = c;
  }
  if (!b) {
    b = oldest;
    snprintf(b->key, sizeof(b->key), "%s", key);
    b->tokens = (double)per_minute;
    b->last_ms = now_ms;
  }
  double rate = (double)per_minute / 60000.0; /* tokens per ms */
  b->tokens += (double)(now_ms - b->last_ms) * rate;
  if (b->tokens > (double)per_minute) b->tokens = (double)per_minute;
  b->last_ms = now_ms;
  bool ok = b->tokens >= 1.0;
  if (ok) {
    b->tokens -= 1.0;
  } else {
    int wait = (int)((1.0 - b->tokens) / rate / 1000.0) + 1;
    *retry_after_s = wait < 1 ? 1 : wait;
  }
  pthread_mutex_unlock(&lock);
  return ok;
}

void http_ratelimit_reset(void) {
  pthread_mutex_lock(&lock);
  memset(table, 0, sizeof(table));
  pthread_mutex_unlock(&lock);
}
