/* KYC for a new registration (queue registration-kyc, on
 * user.registration.requested). Starts a verification at the KYC partner, then
 * polls it every IOTFIN_KYC_POLL_MS through the not-ready outcome until a
 * decision comes, by this poll or by the partner's webhook, whichever is first. */
#include <stdio.h>
#include <string.h>

#include "functions/functions.h"
#include "partners/partners.h"
#include "services/users.h"

static bus_outcome_t from_partner(const partner_result_t *res) {
  if (res->verdict == PARTNER_REFUSED) return bus_failed_permanent("%s", res->error);
  return bus_failed("%s", res->error[0] ? res->error : "KYC answered without a status");
}

bus_outcome_t fn_registration_kyc(app_t *app, const bus_msg_t *msg) {
  const char *reg_id = json_string_value(json_object_get(msg->data, "registration_id"));
  if (!reg_id) return bus_failed_permanent("event without registration_id");
  json_t *reg = NULL;
  if (users_registration_load(app, reg_id, &reg) < 0)
    return bus_failed_permanent("registration %s not found", reg_id);
  const char *status = json_string_value(json_object_get(reg, "status"));
  if (strcmp(status, "pending") != 0) {
    json_decref(reg);
    return bus_done(); /* decided already, e.g. by webhook */
  }
  const char *kyc_id = json_string_value(json_object_get(reg, "kyc_id"));
  partner_result_t res;
  if (!kyc_id) {
    json_t *body = json_pack("{s:s,s:s?,s:s?}", "reference",
                             json_string_value(json_object_get(reg, "user_id")), "email",
                             json_string_value(json_object_get(reg, "email")), "name",
                             json_string_value(json_object_get(reg, "name")));
    partner_call(app, PARTNER_KYC, "POST", "/verifications", body, NULL, 0, &res);
    json_decref(body);
  } else {
    char path[300];
    snprintf(path, sizeof(path), "/verifications/%s", kyc_id);
    partner_call(app, PARTNER_KYC, "GET", path, NULL, NULL, 0, &res);
  }
  const char *vid = json_string_value(json_object_get(res.body, "id"));
  const char *vstatus = json_string_value(json_object_get(res.body, "status"));
  bus_outcome_t out;
  if (res.verdict != PARTNER_OK || !vstatus) {
    out = from_partner(&res);
  } else {
    if (!kyc_id && vid && users_set_kyc_id(app, reg_id, vid) < 0) {
      out = bus_failed("could not record the verification id");
    } else if (strcmp(vstatus, "approved") == 0 || strcmp(vstatus, "rejected") == 0) {
      int rc = users_apply_kyc(app, reg_id, NULL, NULL, vstatus);
      out = rc < 0 ? bus_failed("could not apply the KYC decision") : bus_done();
    } else if (strcmp(vstatus, "pending") == 0) {
      out = bus_not_ready(app->cfg->kyc_poll_ms);
    } else {
      out = bus_failed_permanent("KYC answered an unknown status %s", vstatus);
    }
  }
  partner_result_free(&res);
  json_decref(reg);
  return out;
}

/* Mails the user the decision (queue registration-mail). */
bus_outcome_t fn_registration_mail(app_t *app, const bus_msg_t *msg) {
  const char *email = json_string_value(json_object_get(msg->data, "email"));
  if (!email) return bus_done(); /* a partner user without an email gets no mail */
  bool approved = strcmp(msg->type, "user.registration.approved") == 0;
  return functions__send_mail(app, msg, "registration_mail", email,
                              approved ? "registration_approved" : "registration_rejected",
                              msg->data);
}
