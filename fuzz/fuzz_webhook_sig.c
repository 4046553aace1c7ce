/* Partner webhook signatures (Iotfin-Signature: t=<unix>,v1=<hex>), checked by
 * partner_signature_valid on the raw body. Input: header, a newline, then the body.
 * Oracle: the check only says yes when the header carries the real HMAC of the body
 * for a time within the 300 s window. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partners/partners.h"

#define SECRET "dev-secret-kyc"
#define NOW 1800000000LL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nl = memchr(data, '\n', size);
  size_t hl = nl ? (size_t)(nl - data) : size;
  char *header = malloc(hl + 1);
  if (!header) return 0;
  memcpy(header, data, hl);
  header[hl] = 0;
  const char *body = nl ? (const char *)nl + 1 : "";
  size_t blen = nl ? size - hl - 1 : 0;
  if (partner_signature_valid(SECRET, header, body, blen, NOW)) {
    bool genuine = false;
    for (long long t = NOW - 300; t <= NOW + 300 && !genuine; t++) {
      char want[160];
      partner_signature_make(SECRET, body, blen, t, want, sizeof(want));
      const char *v1 = strstr(want, "v1=");
      genuine = v1 && strstr(header, v1);
    }
    if (!genuine) abort();
  }
  /* Nothing is valid without a secret. */
  if (partner_signature_valid("", header, body, blen, NOW)) abort();
  free(header);
  return 0;
}
