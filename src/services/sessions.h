/* Sessions: the server-side record behind every token, so a session (and every
 * token it issued) can be revoked at once. */
#ifndef IOTFIN_SERVICES_SESSIONS_H
#define IOTFIN_SERVICES_SESSIONS_H

#include <jansson.h>

#include "app.h"
#include "auth/token.h"

/* Opens an anonymous session and returns its answer body
 * {access_token, token_type, expires_in, tier} in *out (caller owns). */
int sessions_create_anonymous(app_t *app, json_t **out);

/* 0 when the token's session exists, is unrevoked and unexpired; else
 * -ERR_UNAUTHENTICATED. Any thread. */
int sessions_check(app_t *app, const auth_claims_t *claims);

#endif
