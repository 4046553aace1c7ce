/* Compact JSON text of a jansson value, byte for byte what json_dumps(v, JSON_COMPACT)
 * writes, at a fraction of its cost: jansson hands every token to a callback and
 * decodes every string character by character, which made the dump of a reply about
 * a tenth of a GET's time (issue #14). Here the text grows in one buffer and strings
 * are copied in runs between the few bytes that need escaping. */
#ifndef IOTFIN_CORE_JSONTEXT_H
#define IOTFIN_CORE_JSONTEXT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* The text of v (any JSON value), malloc'd and NUL-terminated, its length in *len
 * when len is not NULL; NULL when v is NULL or memory runs out. */
char *json_text(const json_t *v, size_t *len);

/* A JSON text written piece by piece, for answers made straight from stored rows
 * with no jansson value between (see store/rowjson.h). Start from a zeroed one; once
 * growing it fails, every call does nothing and json_buf_finish returns NULL. */
typedef struct {
  char *p;
  size_t n, cap;
  bool failed;
} json_buf_t;

/* Appends len bytes as they are. */
void json_buf_raw(json_buf_t *b, const char *s, size_t len);
/* Appends a string literal as it is. */
#define JSON_BUF_LIT(b, lit) json_buf_raw((b), "" lit, sizeof(lit) - 1)
/* Appends s (NUL-terminated, valid UTF-8) as a JSON string, escaped as json_text
 * escapes it. */
void json_buf_string(json_buf_t *b, const char *s);
/* The text, malloc'd and NUL-terminated, its length in *len when len is not NULL;
 * NULL (and b's memory freed) when growing it failed. */
char *json_buf_finish(json_buf_t *b, size_t *len);

#endif
