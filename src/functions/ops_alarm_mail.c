/* Mails IOTFIN_OPS_EMAIL when an alarm is raised (a dead letter appeared). */
#include "functions/functions.h"

bus_outcome_t fn_ops_alarm_mail(app_t *app, const bus_msg_t *msg) {
  return functions__send_mail(app, msg, "ops_alarm_mail", app->cfg->ops_email, "alarm_raised",
                              msg->data);
}
