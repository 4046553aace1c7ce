/* The composition root: one app_t per `iotfin serve` holds every subsystem. main.c
 * builds it, starts the pieces in order and stops them in reverse; handlers reach
 * it through http_req_app(). Fields are set before the HTTP server starts and are
 * read-only afterwards, so no lock guards them. */
#ifndef IOTFIN_APP_H
#define IOTFIN_APP_H

#include <stdint.h>

#include "auth/token.h"
#include "core/config.h"
#include "store/store.h"

struct hub_broker;
struct hub_mqtt;
struct http_server;
struct bus;
struct hub;
struct partner_mock;

typedef struct app {
  const config_t *cfg;
  store_t *store;
  auth_keys_t *keys;
  char admin_token[256];
  struct hub_broker *broker; /* NULL when the broker is external */
  struct hub_mqtt *mqtt;
  struct http_server *http;
  struct bus *bus;
  struct hub *hub;
  struct partner_mock *mock;        /* NULL when IOTFIN_MOCK=off */
  char *tls_cert_pem, *tls_key_pem; /* IOTFIN_TLS_CERT/KEY read at start; NULL: plain HTTP */
  char http_url[300];
  char mqtt_url[300];
  int64_t started_ms;
  /* This instance's name, kept in the data dir across restarts: its queue leases
   * carry it (several instances may share one database). */
  char instance_id[40];
} app_t;

#endif
