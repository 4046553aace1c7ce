/* Forwards device.event.received and device.command.completed to the BANK as
 * CloudEvents in structured mode (queue bank-forwarder: FIFO per device, transient
 * failures retried without limit, so an outage only backs events up). A transient
 * failure is an outage of BANK (bus_unavailable): the queue probes BANK and resumes
 * everything at once when it answers. A 4xx is a permanent refusal and dead-letters
 * that one event. */
#include "functions/functions.h"
#include "partners/partners.h"

bus_outcome_t fn_bank_forwarder(app_t *app, const bus_msg_t *msg) {
  partner_result_t res;
  partner_call(app, PARTNER_BANK, "POST", "/notifications", msg->event,
               "application/cloudevents+json", 0, &res);
  bus_outcome_t out = res.verdict == PARTNER_OK        ? bus_done()
                      : res.verdict == PARTNER_REFUSED ? bus_failed_permanent("%s", res.error)
                                                       : bus_unavailable("%s", res.error);
  partner_result_free(&res);
  return out;
}
