/* The console's session table (see console_sessions.h). Lookups compare every
 * slot in constant time, so a probe cannot learn a session id byte by byte. */
#include "services/console_sessions.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>

#include "core/errors.h"

typedef struct {
  char sid[CONSOLE_SECRET_LEN + 1];
  char csrf[CONSOLE_SECRET_LEN + 1];
  int64_t created_ms, expires_ms; /* expires_ms 0: a free slot */
} slot_t;

/* table_lock guards table. */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static slot_t table[CONSOLE_SESSIONS_MAX];

static void random_hex(char *out) {
  unsigned char b[CONSOLE_SECRET_LEN / 2];
  randombytes_buf(b, sizeof(b));
  sodium_bin2hex(out, CONSOLE_SECRET_LEN + 1, b, sizeof(b));
}

/* Caller must hold table_lock. */
static slot_t *find(const char *sid, int64_t now_ms) {
  if (!sid || strlen(sid) != CONSOLE_SECRET_LEN) return NULL;
  slot_t *hit = NULL;
  for (int i = 0; i < CONSOLE_SESSIONS_MAX; i++) {
    slot_t *s = &table[i];
    if (s->expires_ms && s->expires_ms <= now_ms) memset(s, 0, sizeof(*s));
    if (s->expires_ms && sodium_memcmp(s->sid, sid, CONSOLE_SECRET_LEN) == 0) hit = s;
  }
  return hit;
}

int console_sessions_create(int64_t now_ms, char *sid, char *csrf, int64_t *expires_ms) {
  pthread_mutex_lock(&table_lock);
  find(NULL, now_ms);
  slot_t *pick = &table[0];
  for (int i = 0; i < CONSOLE_SESSIONS_MAX; i++) {
    slot_t *s = &table[i];
    if (s->expires_ms && s->expires_ms <= now_ms) memset(s, 0, sizeof(*s));
    if (!s->expires_ms) {
      pick = s;
      break;
    }
    if (s->created_ms < pick->created_ms) pick = s; /* full: the oldest gives way */
  }
  random_hex(pick->sid);
  random_hex(pick->csrf);
  pick->created_ms = now_ms;
  pick->expires_ms = now_ms + CONSOLE_SESSION_TTL_MS;
  memcpy(sid, pick->sid, CONSOLE_SECRET_LEN + 1);
  memcpy(csrf, pick->csrf, CONSOLE_SECRET_LEN + 1);
  *expires_ms = pick->expires_ms;
  pthread_mutex_unlock(&table_lock);
  return 0;
}

int console_sessions_check(const char *sid, int64_t now_ms, char *csrf, int64_t *expires_ms) {
  pthread_mutex_lock(&table_lock);
  slot_t *s = find(sid, now_ms);
  if (s) {
    if (csrf) memcpy(csrf, s->csrf, CONSOLE_SECRET_LEN + 1);
    if (expires_ms) *expires_ms = s->expires_ms;
  }
  pthread_mutex_unlock(&table_lock);
  return s ? 0 : -ERR_UNAUTHENTICATED;
}

void console_sessions_delete(const char *sid) {
  pthread_mutex_lock(&table_lock);
  slot_t *s = find(sid, 0);
  if (s) sodium_memzero(s, sizeof(*s));
  pthread_mutex_unlock(&table_lock);
}
