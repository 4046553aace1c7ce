/* Paging query parameters of every list route (?limit= and numeric ?cursor=), as
 * http/validate.c reads them after libmicrohttpd has split and unescaped the query.
 * Input: a query string `k=v&k=v`; limit and cursor values are checked against
 * their contract. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *q = malloc(size + 1);
  if (!q) return 0;
  memcpy(q, data, size);
  q[size] = 0;
  char *save = NULL;
  for (char *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
    char *eq = strchr(kv, '=');
    const char *v = eq ? eq + 1 : "";
    int limit = -7;
    int rc = http_validate_limit(v, &limit);
    if (rc == 0 && (limit < 1 || limit > 200)) abort();
    if (rc != 0 && rc != -1) abort();
    int64_t c = http_validate_cursor(v);
    if (c < -1) abort();
  }
  int limit;
  if (http_validate_limit(NULL, &limit) != 0 || limit != 50) abort();
  if (http_validate_cursor(NULL) != 0) abort();
  free(q);
  return 0;
}
