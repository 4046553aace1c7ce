/* Retry, not-ready and dead-letter decisions. */
#include "bus/policy.h"

#include <stddef.h>

int64_t bus_policy_backoff(const bus_policy_t *p, int receives, double rnd) {
  if (receives < 1) receives = 1;
  int64_t d = p->retry_base_ms;
  for (int i = 1; i < receives && d < p->retry_max_ms; i++)
    d *= 2;
  if (d > p->retry_max_ms) d = p->retry_max_ms;
  int64_t half = d / 2;
  return d - half + (int64_t)(rnd * (double)(half + 1));
}

bus_next_t bus_policy_next(const bus_policy_t *p, const bus_outcome_t *o, int receives,
                           int64_t created_ms, int64_t now_ms, double rnd) {
  bus_next_t n = {BUS_NEXT_DELETE, 0, true, NULL};
  switch (o->result) {
  case BUS_DONE:
    return n;
  case BUS_NOT_READY:
    if (p->not_ready_max_ms > 0 && now_ms - created_ms >= p->not_ready_max_ms) {
      n.kind = BUS_NEXT_DEAD;
      n.why = "not ready before the queue's deadline";
      return n;
    }
    n.kind = BUS_NEXT_RETRY;
    n.count_receive = false;
    n.visible_at_ms = now_ms + (o->delay_ms > 0 ? o->delay_ms : p->retry_base_ms);
    return n;
  case BUS_FAILED:
    if (p->max_receives > 0 && receives >= p->max_receives) {
      n.kind = BUS_NEXT_DEAD;
      return n;
    }
    n.kind = BUS_NEXT_RETRY;
    n.visible_at_ms = now_ms + bus_policy_backoff(p, receives, rnd);
    return n;
  case BUS_FAILED_PERMANENT:
    n.kind = BUS_NEXT_DEAD;
    return n;
  }
  return n;
}
