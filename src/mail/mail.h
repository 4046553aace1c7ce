/* Outgoing mail: rendered from named templates, sent over SMTP (libcurl) when
 * IOTFIN_SMTP_URL is set, else written as .eml files under <data_dir>/mail/.
 * Sending is idempotent per message id: a retried send of the same mail writes
 * the same file, and SMTP receivers see the same Message-ID. */
#ifndef IOTFIN_MAIL_MAIL_H
#define IOTFIN_MAIL_MAIL_H

#include <jansson.h>
#include <stdbool.h>

#include "core/config.h"

typedef struct {
  char subject[256];
  char *body; /* malloc'd */
} mail_rendered_t;

/* Renders template name (registration_approved, registration_rejected,
 * device_activated, alarm_raised) with vars ({{key}} replaced by vars[key]).
 * Returns 0, or -ERR_NOT_FOUND for an unknown template. Free with mail_rendered_free. */
int mail_render(const char *name, json_t *vars, mail_rendered_t *out);
void mail_rendered_free(mail_rendered_t *m);

/* True for one plain address local@host (dot-atom local part, host name labels,
 * ops@localhost included): never a list, a display name or a header fragment. Any thread. */
bool mail_address_valid(const char *address);

/* Sends one mail. Returns 0; -ERR_UPSTREAM_UNAVAILABLE for a transient failure
 * (server down, 4xx) worth retrying; -ERR_VALIDATION_FAILED when the server
 * refused it for good (5xx). Any thread. */
int mail_send(const config_t *cfg, const char *to, const char *subject, const char *body,
              const char *message_id, char *err, size_t errlen);

#endif
