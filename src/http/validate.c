/* Body validation and problem objects: the two halves of "bad input gets a clear,
 * stable answer". Messages name the field and the rule so clients can fix input. */
#include "http/validate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"

static void add_error(json_t *errs, const char *field, const char *msg) {
  json_array_append_new(errs, json_pack("{s:s,s:s}", "field", field, "message", msg));
}

static bool in_enum(const char *list, const char *v) {
  size_t vl = strlen(v);
  for (const char *p = list; p && *p;) {
    const char *bar = strchr(p, '|');
    size_t l = bar ? (size_t)(bar - p) : strlen(p);
    if (l == vl && memcmp(p, v, l) == 0) return true;
    p = bar ? bar + 1 : NULL;
  }
  return false;
}

static void check_field(const http_field_t *f, json_t *v, json_t *errs) {
  char msg[160];
  switch (f->type) {
  case HTTP_T_STRING: {
    if (!json_is_string(v)) {
      add_error(errs, f->name, "must be a string");
      return;
    }
    const char *s = json_string_value(v);
    /* Lengths are in characters (code points), as users count them, not bytes. */
    long len = 0;
    for (size_t i = 0, n = json_string_length(v); i < n; i++)
      if (((unsigned char)s[i] & 0xC0) != 0x80) len++;
    if ((f->min || f->max) && (len < f->min || len > f->max)) {
      snprintf(msg, sizeof(msg), "must be %ld to %ld characters long", f->min, f->max);
      add_error(errs, f->name, msg);
    } else if (f->enum_values && !in_enum(f->enum_values, s)) {
      snprintf(msg, sizeof(msg), "must be one of: %s", f->enum_values);
      add_error(errs, f->name, msg);
    } else if (f->check && !f->check(s)) {
      snprintf(msg, sizeof(msg), "must match %s", f->pattern ? f->pattern : "the format");
      add_error(errs, f->name, msg);
    }
    return;
  }
  case HTTP_T_INT: {
    if (!json_is_integer(v)) {
      add_error(errs, f->name, "must be an integer");
      return;
    }
    long n = (long)json_integer_value(v);
    if ((f->min || f->max) && (n < f->min || n > f->max)) {
      snprintf(msg, sizeof(msg), "must be between %ld and %ld", f->min, f->max);
      add_error(errs, f->name, msg);
    }
    return;
  }
  case HTTP_T_BOOL:
    if (!json_is_boolean(v)) add_error(errs, f->name, "must be true or false");
    return;
  case HTTP_T_OBJECT:
    if (!json_is_object(v)) {
      add_error(errs, f->name, "must be an object");
    } else if (f->max) {
      char *s = json_dumps(v, JSON_COMPACT);
      if (s && (long)strlen(s) > f->max) {
        snprintf(msg, sizeof(msg), "must be at most %ld bytes as JSON", f->max);
        add_error(errs, f->name, msg);
      }
      free(s);
    }
    return;
  case HTTP_T_ARRAY: {
    if (!json_is_array(v)) {
      add_error(errs, f->name, "must be an array");
      return;
    }
    long n = (long)json_array_size(v);
    if ((f->min || f->max) && (n < f->min || n > f->max)) {
      snprintf(msg, sizeof(msg), "must have %ld to %ld items", f->min, f->max);
      add_error(errs, f->name, msg);
    }
    return;
  }
  }
}

json_t *http_validate(const http_body_t *spec, json_t *body) {
  json_t *errs = json_array();
  if (!json_is_object(body)) {
    add_error(errs, "body", "must be a JSON object");
    return errs;
  }
  for (const http_field_t *f = spec->fields; f && f->name; f++) {
    json_t *v = json_object_get(body, f->name);
    if (!v || json_is_null(v)) {
      if (f->required) add_error(errs, f->name, "is required");
      continue;
    }
    check_field(f, v, errs);
  }
  if (!spec->open) {
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
      bool known = false;
      for (const http_field_t *f = spec->fields; f && f->name; f++)
        if (strcmp(f->name, key) == 0) known = true;
      if (!known) add_error(errs, key, "is not a known field");
    }
  }
  if (json_array_size(errs) == 0) {
    json_decref(errs);
    return NULL;
  }
  return errs;
}

int http_validate_limit(const char *s, int *limit) {
  *limit = 50;
  if (!s) return 0;
  char *end;
  errno = 0;
  long n = strtol(s, &end, 10);
  if (!*s || *end || n < 1) return -1;
  *limit = (n > 200 || errno == ERANGE) ? 200 : (int)n;
  return 0;
}

int64_t http_validate_cursor(const char *s) {
  if (!s || !*s) return 0;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  return (*end || v < 0 || errno == ERANGE) ? -1 : v;
}

json_t *http_problem_new(int err, const char *detail, json_t *errors, const char *instance) {
  char type[128];
  snprintf(type, sizeof(type), "https://iotfin.dev/problems/%s", errors_code(err));
  json_t *p = json_pack("{s:s,s:s,s:i,s:s,s:s}", "type", type, "title", errors_title(err), "status",
                        errors_status(err), "detail", detail ? detail : errors_title(err), "code",
                        errors_code(err));
  if (instance) json_object_set_new(p, "instance", json_string(instance));
  if (errors) json_object_set_new(p, "errors", errors);
  return p;
}
