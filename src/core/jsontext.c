/* Compact JSON text (see jsontext.h). jansson keeps every string it holds as valid
 * UTF-8 (json_string checks it; the _nocheck variants are never used here), so bytes
 * from 0x80 up go through as they are, as json_dumps writes them without
 * JSON_ENSURE_ASCII. Reals are rare in iotfin's documents and their shortest form is
 * jansson's own business: they are left to json_dumps. */
#include "core/jsontext.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool reserve(json_buf_t *o, size_t more) {
  if (o->failed) return false;
  if (o->n + more + 1 <= o->cap) return true;
  size_t cap = o->cap ? o->cap : 256;
  while (cap < o->n + more + 1)
    cap *= 2;
  char *p = realloc(o->p, cap);
  if (!p) {
    o->failed = true;
    return false;
  }
  o->p = p;
  o->cap = cap;
  return true;
}

static void put(json_buf_t *o, const char *s, size_t len) {
  if (!reserve(o, len)) return;
  memcpy(o->p + o->n, s, len);
  o->n += len;
}

static void put_char(json_buf_t *o, char c) {
  if (!reserve(o, 1)) return;
  o->p[o->n++] = c;
}

/* What stands for byte c inside a JSON string, or NULL when it stands for itself. */
static const char *escape_of(unsigned char c, char buf[8]) {
  switch (c) {
  case '"':
    return "\\\"";
  case '\\':
    return "\\\\";
  case '\b':
    return "\\b";
  case '\f':
    return "\\f";
  case '\n':
    return "\\n";
  case '\r':
    return "\\r";
  case '\t':
    return "\\t";
  default:
    if (c >= 0x20) return NULL;
    snprintf(buf, 8, "\\u%04X", c);
    return buf;
  }
}

/* Bytes that cannot stand for themselves inside a JSON string: controls, '"', '\\'. */
static const bool needs_escape[256] = {[0x00 ... 0x1f] = true, ['"'] = true, ['\\'] = true};

static void put_string(json_buf_t *o, const char *s, size_t len) {
  /* Room for the whole string unescaped at once; an escape asks for more itself. */
  if (!reserve(o, len + 2)) return;
  o->p[o->n++] = '"';
  size_t run = 0; /* start of the bytes not yet copied */
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!needs_escape[c]) continue;
    char buf[8];
    const char *e = escape_of(c, buf);
    put(o, s + run, i - run);
    put(o, e, strlen(e));
    run = i + 1;
  }
  put(o, s + run, len - run);
  put_char(o, '"');
}

static void put_value(json_buf_t *o, const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: {
    put_char(o, '{');
    const char *key;
    size_t key_len;
    json_t *val;
    bool first = true;
    /* Insertion order, as json_dumps without JSON_SORT_KEYS; a key may hold NUL. */
    json_object_keylen_foreach((json_t *)v, key, key_len, val) {
      if (!first) put_char(o, ',');
      first = false;
      put_string(o, key, key_len);
      put_char(o, ':');
      put_value(o, val);
    }
    put_char(o, '}');
    break;
  }
  case JSON_ARRAY: {
    put_char(o, '[');
    for (size_t i = 0; i < json_array_size(v); i++) {
      if (i) put_char(o, ',');
      put_value(o, json_array_get(v, i));
    }
    put_char(o, ']');
    break;
  }
  case JSON_STRING:
    put_string(o, json_string_value(v), json_string_length(v));
    break;
  case JSON_INTEGER: {
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    put(o, buf, (size_t)n);
    break;
  }
  case JSON_REAL: {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) {
      o->failed = true;
      return;
    }
    put(o, s, strlen(s));
    free(s);
    break;
  }
  case JSON_TRUE:
    put(o, "true", 4);
    break;
  case JSON_FALSE:
    put(o, "false", 5);
    break;
  case JSON_NULL:
    put(o, "null", 4);
    break;
  }
}

char *json_text(const json_t *v, size_t *len) {
  if (!v) return NULL;
  json_buf_t o = {0};
  put_value(&o, v);
  return json_buf_finish(&o, len);
}

void json_buf_raw(json_buf_t *b, const char *s, size_t len) { put(b, s, len); }

void json_buf_string(json_buf_t *b, const char *s) { put_string(b, s, strlen(s)); }

char *json_buf_finish(json_buf_t *b, size_t *len) {
  if (!reserve(b, 0)) {
    free(b->p);
    *b = (json_buf_t){0};
    return NULL;
  }
  b->p[b->n] = 0;
  if (len) *len = b->n;
  char *text = b->p;
  *b = (json_buf_t){0};
  return text;
}
