/* The one error vocabulary of iotfin (CONTRACT section 2). Internal functions
 * return 0 or -ERR_*; the HTTP layer turns an ERR_* into problem+json through this
 * table, and /openapi.json lists the same table. Add a code here and nowhere else. */
#ifndef IOTFIN_CORE_ERRORS_H
#define IOTFIN_CORE_ERRORS_H

/* X(name, http status, stable code, title) */
#define ERRORS_TABLE(X)                                                                            \
  X(INVALID_JSON, 400, "invalid_json", "Body is not valid JSON")                                   \
  X(BAD_REQUEST, 400, "bad_request", "Malformed HTTP request")                                     \
  X(VALIDATION_FAILED, 400, "validation_failed", "Request validation failed")                      \
  X(UNAUTHENTICATED, 401, "unauthenticated", "Authentication required")                            \
  X(INVALID_CREDENTIALS, 401, "invalid_credentials", "Invalid credentials")                        \
  X(FORBIDDEN, 403, "forbidden", "Forbidden")                                                      \
  X(NOT_FOUND, 404, "not_found", "Not found")                                                      \
  X(UNKNOWN_SERIAL, 404, "unknown_serial", "Unknown serial")                                       \
  X(METHOD_NOT_ALLOWED, 405, "method_not_allowed", "Method not allowed")                           \
  X(CONFLICT, 409, "conflict", "Conflict")                                                         \
  X(ALREADY_CLAIMED, 409, "already_claimed", "Device already claimed")                             \
  X(REGISTRATION_PENDING, 409, "registration_pending", "Registration still pending")               \
  X(DEVICE_NOT_ACTIVE, 409, "device_not_active", "Device is not active")                           \
  X(EMAIL_TAKEN, 409, "email_taken", "Email already registered")                                   \
  X(PAYLOAD_TOO_LARGE, 413, "payload_too_large", "Payload too large")                              \
  X(URI_TOO_LONG, 414, "uri_too_long", "URI too long")                                             \
  X(UNSUPPORTED_MEDIA_TYPE, 415, "unsupported_media_type", "Unsupported media type")               \
  X(IDEMPOTENCY_KEY_REUSED, 422, "idempotency_key_reused", "Idempotency key reused")               \
  X(RATE_LIMITED, 429, "rate_limited", "Too many requests")                                        \
  X(HEADERS_TOO_LARGE, 431, "headers_too_large", "Request header fields too large")                \
  X(INTERNAL, 500, "internal", "Internal error")                                                   \
  X(UPSTREAM_UNAVAILABLE, 502, "upstream_unavailable", "Upstream partner unavailable")             \
  X(UNAVAILABLE, 503, "unavailable", "Service unavailable")

typedef enum {
  ERR_NONE = 0,
#define ERRORS_ENUM(name, status, code, title) ERR_##name,
  ERRORS_TABLE(ERRORS_ENUM)
#undef ERRORS_ENUM
      ERR__COUNT
} err_t;

/* HTTP status, stable code string and title of an error; err may be negative
 * (as functions return it). Unknown values map to ERR_INTERNAL. */
int errors_status(int err);
const char *errors_code(int err);
const char *errors_title(int err);

#endif
