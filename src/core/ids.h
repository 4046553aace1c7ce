/* Identifiers: UUIDv7 (time-ordered, so ids sort by creation and index well) and
 * random URL-safe secrets. Both draw from libsodium's CSPRNG. */
#ifndef IOTFIN_CORE_IDS_H
#define IOTFIN_CORE_IDS_H

#include <stddef.h>

#define IDS_UUID_LEN 37 /* 36 characters and the terminator */

/* Writes a new UUIDv7 such as 01937c6e-...; out needs IDS_UUID_LEN bytes. Ids made
 * by one process are strictly increasing, even within one millisecond. */
void ids_uuid7(char out[IDS_UUID_LEN]);
/* Writes nbytes of randomness as base64url without padding into out (cap bytes). */
void ids_random_token(char *out, size_t cap, size_t nbytes);

#endif
