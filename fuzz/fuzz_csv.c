/* CSV device import (POST /v1/admin/devices/import with text/csv). The parser is
 * static in api_admin_devices.c, so this file compiles that source in: the target
 * runs the real code without widening its interface; the library's copy of the
 * object is then never linked in. Oracle: every non-empty data row comes back
 * either as an item or as an invalid entry, never silently dropped. */
#include "../src/api/api_admin_devices.c"

#include <stdint.h>

static int count_rows(const char *s, size_t len) {
  int rows = -1; /* the header */
  size_t i = 0;
  while (i < len) {
    size_t j = i;
    while (j < len && s[j] != '\n')
      j++;
    size_t l = j - i;
    if (l && s[j - 1] == '\r') l--;
    if (l) rows++; /* strtok_r skips empty lines, and the parser skips "\r" alone */
    i = j + 1;
  }
  return rows;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  json_t *items = json_array(), *invalid = json_array();
  const char *why = NULL;
  int rc = parse_csv((const char *)data, size, items, invalid, &why);
  if (rc < 0 && !why) abort(); /* a refusal must say why */
  /* Rows after a NUL byte: how they are treated is the import's contract, not this
   * oracle's; check the count only where the body has none. */
  if (rc == 0 && !memchr(data, 0, size)) {
    int rows = count_rows((const char *)data, size);
    if ((int)(json_array_size(items) + json_array_size(invalid)) != rows) abort();
  }
  json_decref(items);
  json_decref(invalid);
  return 0;
}
