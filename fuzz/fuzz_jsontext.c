/* The compact JSON writer (core/jsontext.c) against jansson's own: for every
 * document jansson parses (any value, NUL allowed inside strings), json_text must
 * write exactly what json_dumps(JSON_COMPACT) writes, since replies, stored events
 * and Idempotency-Key replays are compared byte for byte. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/jsontext.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_error_t err;
  json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
  if (!v) return 0;
  char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
  size_t len = 0;
  char *got = json_text(v, &len);
  if (!want || !got || strcmp(want, got) != 0 || len != strlen(want)) abort();
  free(want);
  free(got);
  json_decref(v);
  return 0;
}
