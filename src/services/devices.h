/* The device registry: supplier manifest import, and (later) claim, activation,
 * credentials and retirement. */
#ifndef IOTFIN_SERVICES_DEVICES_H
#define IOTFIN_SERVICES_DEVICES_H

#include <jansson.h>
#include <stdbool.h>

#include "app.h"

/* True when serial is 4-64 characters of [A-Za-z0-9-]. */
bool devices_serial_valid(const char *serial);

/* Why item ({serial, model?}) cannot be imported, or NULL when it can. */
const char *devices_item_problem(json_t *item);

/* Imports items (an array of valid {serial, model?}; borrowed) in one transaction.
 * Serials already known are counted as duplicates, not imported again. */
int devices_import(app_t *app, json_t *items, int *imported, int *duplicates);

#endif
