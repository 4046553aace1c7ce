/* One mail per causing event: check the done mark, render, send, then record the
 * done mark and the mail.sent event together. A crash between sending and
 * recording sends again with the same Message-ID, which receivers de-duplicate. */
#include <stdio.h>
#include <string.h>

#include "core/errors.h"
#include "core/ids.h"
#include "functions/functions.h"
#include "mail/mail.h"
#include "services/events.h"

typedef struct {
  const char *handler, *event_id, *mail_id, *to, *template_name;
} sent_t;

static int record_sent(store_tx_t *tx, void *arg) {
  sent_t *s = arg;
  int rc = bus_mark_done(tx, s->handler, s->event_id);
  if (rc <= 0) return rc; /* another delivery of this message recorded it first */
  char subject[80];
  snprintf(subject, sizeof(subject), "mails/%s", s->mail_id);
  return events_record(tx, "mail.sent", subject,
                       json_pack("{s:s,s:s,s:s,s:s}", "mail_id", s->mail_id, "to", s->to,
                                 "template", s->template_name, "cause", s->event_id),
                       NULL);
}

bus_outcome_t functions__send_mail(app_t *app, const bus_msg_t *msg, const char *handler,
                                   const char *to, const char *template_name, json_t *vars) {
  int done = bus_is_done(app->store, handler, msg->event_id);
  if (done < 0) return bus_failed("store unavailable");
  if (done) return bus_done();
  mail_rendered_t m;
  if (mail_render(template_name, vars, &m) < 0)
    return bus_failed_permanent("unknown mail template %s", template_name);
  /* The mail id derives from handler and event, so a retry reuses it. */
  char mail_id[IDS_UUID_LEN + 64];
  snprintf(mail_id, sizeof(mail_id), "%s-%s", msg->event_id, handler);
  for (char *c = mail_id; *c; c++)
    if (*c == '_') *c = '-';
  char err[256] = "";
  int rc = mail_send(app->cfg, to, m.subject, m.body, mail_id, err, sizeof(err));
  mail_rendered_free(&m);
  if (rc == -ERR_VALIDATION_FAILED) return bus_failed_permanent("%s", err);
  if (rc < 0) return bus_failed("%s", err[0] ? err : "mail transport unavailable");
  sent_t s = {handler, msg->event_id, mail_id, to, template_name};
  if (store_write(app->store, record_sent, &s) < 0)
    return bus_failed("mail sent but not recorded; will be re-sent with the same Message-ID");
  return bus_done();
}
