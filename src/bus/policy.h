/* The queue rules as pure functions: what happens to a message after its handler
 * answered, and how long a failed message waits. Kept free of I/O so each rule is
 * unit-tested on its own (tests/unit/test_policy.c). */
#ifndef IOTFIN_BUS_POLICY_H
#define IOTFIN_BUS_POLICY_H

#include <stdbool.h>
#include <stdint.h>

/* What a handler says about one message. */
typedef enum {
  BUS_DONE,            /* finished: the message is deleted */
  BUS_NOT_READY,       /* come back after delay_ms; not a failure */
  BUS_FAILED,          /* retried with backoff; dead-lettered after max receives */
  BUS_FAILED_PERMANENT /* dead-lettered at once */
} bus_result_t;

typedef struct {
  bus_result_t result;
  int64_t delay_ms; /* BUS_NOT_READY: when to look again */
  char reason[256]; /* BUS_FAILED*: why, kept as last_error */
  bool unavailable; /* BUS_FAILED because the queue's partner did not answer (bus.h) */
} bus_outcome_t;

typedef struct {
  int64_t retry_base_ms, retry_max_ms;
  int max_receives;         /* <= 0: never dead-letter transient failures */
  int64_t not_ready_max_ms; /* how long a message may stay not ready */
} bus_policy_t;

typedef enum { BUS_NEXT_DELETE, BUS_NEXT_RETRY, BUS_NEXT_DEAD } bus_next_kind_t;

typedef struct {
  bus_next_kind_t kind;
  int64_t visible_at_ms; /* BUS_NEXT_RETRY */
  bool count_receive;    /* false: the receive is given back (not ready) */
  const char *why;       /* BUS_NEXT_DEAD: reason when the policy (not the handler) decided */
} bus_next_t;

/* Delay before retry number `receives` (1 = after the first failed receive):
 * exponential from base, capped at max, with "equal jitter" (half fixed, half
 * random) so retries of many messages spread out. rnd is in [0, 1). */
int64_t bus_policy_backoff(const bus_policy_t *p, int receives, double rnd);

/* Decides the next state of a message received `receives` times (this receive
 * included), first enqueued at created_ms, given the handler's outcome. */
bus_next_t bus_policy_next(const bus_policy_t *p, const bus_outcome_t *o, int receives,
                           int64_t created_ms, int64_t now_ms, double rnd);

#endif
