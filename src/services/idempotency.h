/* Idempotency-Key records (CONTRACT section 4): the first answer to a key from a
 * principal is kept for 24 h and replayed for the same body; another body gets
 * 422. A key whose first request is still running answers 409. */
#ifndef IOTFIN_SERVICES_IDEMPOTENCY_H
#define IOTFIN_SERVICES_IDEMPOTENCY_H

#include "app.h"

typedef struct {
  int status;     /* on replay */
  char *response; /* on replay, malloc'd */
} idem_replay_t;

/* Claims (principal, key) for a request to route with body_hash. Returns 0 when
 * the request should run (then call idem_finish or idem_abort), 1 with *replay
 * filled when an earlier answer is to be replayed, -ERR_IDEMPOTENCY_KEY_REUSED,
 * or -ERR_CONFLICT while the first request is in progress. */
int idem_begin(app_t *app, const char *principal, const char *key, const char *route,
               const char *body_hash, idem_replay_t *replay);
/* Stores the answer of a request begun with idem_begin. */
int idem_finish(app_t *app, const char *principal, const char *key, int status,
                const char *response);
/* Forgets a begun request (it failed with a server error: a retry should run again). */
int idem_abort(app_t *app, const char *principal, const char *key);
/* At start: frees the keys of requests this instance (its data dir's instance id)
 * began and never finished, because it was stopped dead. Until then they answer 409
 * on every instance. */
int idem_release_own(app_t *app);

#endif
