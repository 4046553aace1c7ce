/* The operator console's files, compiled into the binary from console/ by
 * cmake/embed_console.cmake (the generated console_assets.c). Read-only data. */
#ifndef IOTFIN_API_CONSOLE_ASSETS_H
#define IOTFIN_API_CONSOLE_ASSETS_H

#include <stddef.h>

typedef struct {
  const char *name;         /* file name under console/, e.g. "console.js" */
  const char *content_type; /* with charset for text */
  const unsigned char *data;
  size_t len;
} console_asset_t;

extern const console_asset_t console_assets[];
extern const int console_assets_count;

#endif
