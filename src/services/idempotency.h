/* Idempotency-Key records (CONTRACT section 4): the first answer to a key from a
 * principal is kept for 24 h and replayed for the same body; another body gets
 * 422. A key whose first request is still running answers 409. A route whose work
 * is one transaction records its answer inside it (idem_record_tx), so that no
 * crash can leave the work committed and the key free to run it again. */
#ifndef IOTFIN_SERVICES_IDEMPOTENCY_H
#define IOTFIN_SERVICES_IDEMPOTENCY_H

#include "app.h"

typedef struct {
  int status;     /* on replay */
  char *response; /* on replay, malloc'd */
} idem_replay_t;

/* The key a running request holds, handed by the HTTP layer to the service that
 * writes the request's work (NULL when the request has no key). */
typedef struct idem_pending {
  const char *principal, *key;
  int status; /* set by idem_record_tx: the answer written with the work */
} idem_pending_t;

/* Claims (principal, key) for a request to route with body_hash. Returns 0 when
 * the request should run (then call idem_finish or idem_abort), 1 with *replay
 * filled when an earlier answer is to be replayed, -ERR_IDEMPOTENCY_KEY_REUSED,
 * or -ERR_CONFLICT while the first request is in progress. */
int idem_begin(app_t *app, const char *principal, const char *key, const char *route,
               const char *body_hash, idem_replay_t *replay);
/* Stores the answer of a request begun with idem_begin. */
int idem_finish(app_t *app, const char *principal, const char *key, int status,
                const char *response);
/* Inside the transaction of the request's work: records status and body (as
 * JSON_COMPACT text, byte for byte what http_reply_json sends) as the key's answer,
 * so both commit together. The HTTP layer then leaves the record alone when the
 * reply it sends has that status. No-op returning 0 when p is NULL. */
int idem_record_tx(store_tx_t *tx, idem_pending_t *p, int status, json_t *body);
/* The same for an answer already written as JSON text. */
int idem_record_text_tx(store_tx_t *tx, idem_pending_t *p, int status, const char *json);
/* Forgets a begun request (it failed with a server error: a retry should run again). */
int idem_abort(app_t *app, const char *principal, const char *key);
/* At start: frees the keys of requests this instance (its data dir's instance id)
 * began and never finished, because it was stopped dead. Until then they answer 409
 * on every instance. */
int idem_release_own(app_t *app);

#endif
