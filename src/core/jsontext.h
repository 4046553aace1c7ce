/* Compact JSON text of a jansson value, byte for byte what json_dumps(v, JSON_COMPACT)
 * writes, at a fraction of its cost: jansson hands every token to a callback and
 * decodes every string character by character, which made the dump of a reply about
 * a tenth of a GET's time (issue #14). Here the text grows in one buffer and strings
 * are copied in runs between the few bytes that need escaping. */
#ifndef IOTFIN_CORE_JSONTEXT_H
#define IOTFIN_CORE_JSONTEXT_H

#include <jansson.h>
#include <stddef.h>

/* The text of v (any JSON value), malloc'd and NUL-terminated, its length in *len
 * when len is not NULL; NULL when v is NULL or memory runs out. */
char *json_text(const json_t *v, size_t *len);

#endif
