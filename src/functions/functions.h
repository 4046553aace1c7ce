/* Event handlers ("functions"), one file each. A function receives one message and
 * returns an outcome; it keeps no state of its own and changes durable state only
 * through the services layer. bus/queues.c wires each to its queue. */
#ifndef IOTFIN_FUNCTIONS_FUNCTIONS_H
#define IOTFIN_FUNCTIONS_FUNCTIONS_H

#include "bus/bus.h"

bus_outcome_t fn_ops_alarm_mail(app_t *app, const bus_msg_t *msg);
bus_outcome_t fn_registration_kyc(app_t *app, const bus_msg_t *msg);
bus_outcome_t fn_registration_mail(app_t *app, const bus_msg_t *msg);
bus_outcome_t fn_partner_webhooks(app_t *app, const bus_msg_t *msg);
bus_outcome_t fn_device_provisioning(app_t *app, const bus_msg_t *msg);
bus_outcome_t fn_device_mail(app_t *app, const bus_msg_t *msg);
bus_outcome_t fn_bank_forwarder(app_t *app, const bus_msg_t *msg);

/* Shared by the mail functions: renders template with vars (borrowed), sends it to
 * `to` once per (handler, causing event), and records mail.sent in the same
 * transaction as the done mark. */
bus_outcome_t functions__send_mail(app_t *app, const bus_msg_t *msg, const char *handler,
                                   const char *to, const char *template_name, json_t *vars);

#endif
