/* Acts on partner webhooks (queue partner-webhooks, on partner.webhook.received).
 * KYC's verification.completed decides a registration; the same decision applied
 * by polling makes this a no-op, and the reverse. */
#include <string.h>

#include "core/errors.h"
#include "functions/functions.h"
#include "services/users.h"

bus_outcome_t fn_partner_webhooks(app_t *app, const bus_msg_t *msg) {
  const char *partner = json_string_value(json_object_get(msg->data, "partner"));
  const char *type = json_string_value(json_object_get(msg->data, "type"));
  json_t *data = json_object_get(msg->data, "data");
  if (!partner || !type) return bus_failed_permanent("webhook event without partner or type");
  if (strcmp(partner, "kyc") == 0 && strcmp(type, "verification.completed") == 0) {
    const char *vid = json_string_value(json_object_get(data, "verification_id"));
    const char *ref = json_string_value(json_object_get(data, "reference"));
    const char *status = json_string_value(json_object_get(data, "status"));
    if (!status || (!vid && !ref))
      return bus_failed_permanent("verification.completed without status or reference");
    int rc = users_apply_kyc(app, NULL, vid, vid ? NULL : ref, status);
    if (rc == -ERR_NOT_FOUND && vid && ref) rc = users_apply_kyc(app, NULL, NULL, ref, status);
    if (rc == -ERR_NOT_FOUND) return bus_failed_permanent("no registration for this verification");
    if (rc < 0) return bus_failed("could not apply the KYC decision");
    return bus_done();
  }
  return bus_done(); /* other webhooks are recorded in the event log only */
}
