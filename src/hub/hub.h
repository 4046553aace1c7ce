/* The device hub: iotfin's side of MQTT. It stores device events, turns acks into
 * command states, answers device requests within 3 s, tracks presence from the
 * broker plugin, delivers queued commands oldest first once a device listens, and
 * keeps the broker plugin's keys and revocations current.
 *
 * Threads: libmosquitto's network thread only parses and routes; messages of one
 * device always go to the same "hub-lane" thread (so its events keep their
 * order); device requests run on "hub-request" threads (a BANK call must not hold
 * up a lane); "hub-timer" expires commands. */
#ifndef IOTFIN_HUB_HUB_H
#define IOTFIN_HUB_HUB_H

#include "app.h"

typedef struct hub hub_t;

/* Connects to the broker at host:port (user/pass may be NULL) and starts the
 * threads. managed: the broker is ours and fresh, so every device starts offline.
 * Sets app->mqtt. Returns 0 and *out, or -ERR_UNAVAILABLE. */
int hub_start(app_t *app, const char *host, int port, const char *user, const char *pass,
              bool managed, hub_t **out);
/* Stops the threads and the MQTT client; sets *hub to NULL. */
void hub_stop(hub_t **hub);

/* A command was queued for device_id: send it now if the device listens. Any thread. */
void hub_command_queued(hub_t *hub, const char *device_id);
/* The device (or only its session sid, when not NULL) was revoked: the broker
 * refuses its token and closes its connection now. Any thread. */
void hub_device_revoked(hub_t *hub, const char *device_id, const char *sid);
/* The signing keys changed: send the new JWKS to the broker plugin. */
void hub_keys_changed(hub_t *hub);

#endif
