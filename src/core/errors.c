/* Lookup functions over ERRORS_TABLE. */
#include "core/errors.h"

typedef struct {
  int status;
  const char *code, *title;
} err_info_t;

static const err_info_t infos[ERR__COUNT] = {[ERR_NONE] = {200, "ok", "OK"},
#define ERRORS_INFO(name, st, cd, tt) [ERR_##name] = {st, cd, tt},
                                             ERRORS_TABLE(ERRORS_INFO)
#undef ERRORS_INFO
};

static const err_info_t *lookup(int err) {
  if (err < 0 && err > -ERR__COUNT) err = -err;
  if (err < ERR_NONE || err >= ERR__COUNT) err = ERR_INTERNAL;
  return &infos[err];
}

int errors_status(int err) { return lookup(err)->status; }
const char *errors_code(int err) { return lookup(err)->code; }
const char *errors_title(int err) { return lookup(err)->title; }
