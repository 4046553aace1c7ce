/* UUIDv7 per RFC 9562, with a 12-bit counter in rand_a so that ids from one process
 * stay ordered within a millisecond (event ids double as stream cursors). */
#include "core/ids.h"

#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>

#include "core/timeutil.h"

/* Guards last_ms and seq: ids from all threads form one increasing sequence. */
static pthread_mutex_t ids_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t last_ms;
static uint32_t seq;

void ids_uuid7(char out[IDS_UUID_LEN]) {
  uint8_t b[16];
  randombytes_buf(b, sizeof(b));
  pthread_mutex_lock(&ids_lock);
  int64_t ms = time_now_ms();
  if (ms <= last_ms) {
    seq++;
    if (seq > 0xfff) { /* counter spent: borrow the next millisecond */
      last_ms++;
      seq = 0;
    }
    ms = last_ms;
  } else {
    last_ms = ms;
    seq = 0;
  }
  uint32_t s = seq;
  pthread_mutex_unlock(&ids_lock);
  for (int i = 0; i < 6; i++)
    b[i] = (uint8_t)(ms >> (40 - 8 * i));
  b[6] = (uint8_t)(0x70 | ((s >> 8) & 0x0f));
  b[7] = (uint8_t)(s & 0xff);
  b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
  /* Hand-formatted: ids are made inside store transactions, where printf's cost shows. */
  static const char hex[] = "0123456789abcdef";
  char *o = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
    *o++ = hex[b[i] >> 4];
    *o++ = hex[b[i] & 15];
  }
  *o = 0;
}

void ids_random_token(char *out, size_t cap, size_t nbytes) {
  uint8_t buf[128];
  if (nbytes > sizeof(buf)) nbytes = sizeof(buf);
  randombytes_buf(buf, nbytes);
  sodium_bin2base64(out, cap, buf, nbytes, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}
