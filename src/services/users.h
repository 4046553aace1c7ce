/* Users and their registrations: local users with Argon2id hashes, partner users
 * checked at the IDENTITY partner, and the KYC decision that approves or rejects
 * a registration exactly once, whichever path (webhook or poll) brings it first. */
#ifndef IOTFIN_SERVICES_USERS_H
#define IOTFIN_SERVICES_USERS_H

#include <jansson.h>

#include "app.h"
#include "auth/token.h"
#include "services/idempotency.h"

/* Registers a user (body already schema-checked: type local or partner) and
 * opens the registration session. *out is the 202 body, recorded under idem's key
 * in the same transaction when idem is given. Errors:
 * -ERR_VALIDATION_FAILED with *errors set (stolen by the caller), -ERR_EMAIL_TAKEN,
 * -ERR_INVALID_CREDENTIALS, -ERR_UPSTREAM_UNAVAILABLE. */
int users_register(app_t *app, json_t *body, idem_pending_t *idem, json_t **out, json_t **errors);

/* The registration id as seen by its own registration session (claims->sub is
 * the user id); -ERR_NOT_FOUND for anyone else's. */
int users_registration_get(app_t *app, const auth_claims_t *claims, const char *id, json_t **out);
/* Trades an approved registration for a user session; -ERR_REGISTRATION_PENDING,
 * -ERR_FORBIDDEN once rejected, -ERR_NOT_FOUND. */
int users_registration_session(app_t *app, const auth_claims_t *claims, const char *id,
                               json_t **out);

/* Logs in with {email, password} or {type: partner, username, password}.
 * -ERR_INVALID_CREDENTIALS, -ERR_FORBIDDEN (not approved), -ERR_UPSTREAM_UNAVAILABLE. */
int users_login(app_t *app, json_t *body, json_t **out, json_t **errors);

/* GET /v1/me, as JSON text (malloc'd, its length in *len). */
int users_me(app_t *app, const char *user_id, char **json, size_t *len);

/* Applies a KYC decision ("approved" or "rejected") to the registration found by
 * registration id, or by verification id, or by user id (first non-NULL). Applying
 * twice is a no-op. Returns 1 when this call decided, 0 when already decided. */
int users_apply_kyc(app_t *app, const char *registration_id, const char *kyc_id,
                    const char *user_id, const char *status);
/* Records the KYC verification id of a registration. */
int users_set_kyc_id(app_t *app, const char *registration_id, const char *kyc_id);
/* Loads {id, user_id, status, kyc_id, email, name} of a registration. */
int users_registration_load(app_t *app, const char *registration_id, json_t **out);

#endif
