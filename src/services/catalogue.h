/* The event catalogue: the one list of event types iotfin emits, each with the
 * fields its data carries. events_record() refuses types not listed here, and
 * `iotfin events-doc` writes docs/events.md from the same list. */
#ifndef IOTFIN_SERVICES_CATALOGUE_H
#define IOTFIN_SERVICES_CATALOGUE_H

#include <jansson.h>
#include <stdio.h>

typedef struct {
  const char *type;
  const char *subject; /* pattern, e.g. devices/<id> */
  const char *fields;  /* required data fields, comma separated */
  const char *description;
} catalogue_entry_t;

/* The entry for type, or NULL when the type is not in the catalogue. */
const catalogue_entry_t *catalogue_find(const char *type);
/* Checks that data carries every required field of type's entry. Returns 0 or
 * -ERR_VALIDATION_FAILED (with a log line naming the field). */
int catalogue_check(const char *type, json_t *data);
/* Writes the catalogue as Markdown. */
void catalogue_write_markdown(FILE *out);

#endif
