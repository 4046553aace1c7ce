/* The broker plugin's presence reports (iotfin/presence/<id>). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "hub/payloads.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  hub_presence_t p = hub_presence_parse(data, size);
  if (p != HUB_PRESENCE_NONE && p != HUB_PRESENCE_ONLINE && p != HUB_PRESENCE_OFFLINE &&
      p != HUB_PRESENCE_SUBSCRIBED)
    abort();
  return 0;
}
