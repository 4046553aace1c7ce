/* The signing keys in the store, shared by every instance on the database: a token
 * one instance signs verifies on all, and a rotation anywhere is seen everywhere
 * within moments (a "keys" notification, see store_notify). The in-memory set in
 * app->keys is a copy of the table. */
#ifndef IOTFIN_SERVICES_SIGNING_KEYS_H
#define IOTFIN_SERVICES_SIGNING_KEYS_H

#include <stdint.h>

#include "app.h"

/* At start: an empty table takes the keys app->keys was loaded with (the data dir's
 * key files: an upgraded install keeps verifying its tokens); then app->keys becomes
 * the table's keys, and follows every later change. Returns 0 or a -ERR_*. */
int signing_keys_start(app_t *app);
void signing_keys_stop(app_t *app);
/* Adds a new key, which signs from now on everywhere; keys that stopped signing more
 * than keep_s ago (the longest token lifetime) leave the table. Writes the new kid. */
int signing_keys_rotate(app_t *app, int64_t keep_s, char kid_out[17]);

#endif
