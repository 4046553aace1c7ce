/* Links a claimed device at the SUPPLIER (queue device-provisioning, on
 * device.claimed). 201 {device_id} activates it; a 4xx refusal fails it for good
 * (the message is done: the refusal is the answer); 5xx and timeouts retry. */
#include <string.h>

#include "functions/functions.h"
#include "partners/partners.h"
#include "services/devices.h"

bus_outcome_t fn_device_provisioning(app_t *app, const bus_msg_t *msg) {
  const char *id = json_string_value(json_object_get(msg->data, "device_id"));
  const char *serial = json_string_value(json_object_get(msg->data, "serial"));
  const char *owner = json_string_value(json_object_get(msg->data, "owner_id"));
  if (!id || !serial || !owner) return bus_failed_permanent("device.claimed without its fields");
  char status[16], ext[128];
  if (devices_status(app, id, status, ext) < 0) return bus_failed("device %s not readable", id);
  if (strcmp(status, "provisioning") != 0) return bus_done(); /* decided already */
  json_t *body = json_pack("{s:s,s:s}", "serial", serial, "owner_reference", owner);
  partner_result_t res;
  partner_call(app, PARTNER_SUPPLIER, "POST", "/registrations", body, NULL, 0, &res);
  json_decref(body);
  bus_outcome_t out;
  const char *sup = json_string_value(json_object_get(res.body, "device_id"));
  if (res.verdict == PARTNER_OK && sup) {
    out = devices_activate(app, id, sup) < 0 ? bus_failed("could not activate") : bus_done();
  } else if (res.verdict == PARTNER_REFUSED) {
    out = devices_fail(app, id, res.error) < 0 ? bus_failed("could not record the failure")
                                               : bus_done();
  } else {
    out = bus_failed("%s", res.error[0] ? res.error : "SUPPLIER answered without device_id");
  }
  partner_result_free(&res);
  return out;
}

/* Mails the owner that the device is active (queue device-mail). */
bus_outcome_t fn_device_mail(app_t *app, const bus_msg_t *msg) {
  const char *email = json_string_value(json_object_get(msg->data, "owner_email"));
  if (!email) return bus_done(); /* an owner without an email gets no mail */
  return functions__send_mail(app, msg, "device_mail", email, "device_activated", msg->data);
}
