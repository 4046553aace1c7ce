/* The spool record reader (hub/spool_format.h spool_record_next): a segment file is
 * written by the broker plugin but read back after crashes, torn writes and disk
 * trouble. When the first byte is odd, valid-looking headers get their CRC fixed up
 * first, so the fuzzer reaches the body parsing behind the checksum. Oracle: every
 * record lies inside the buffer and the offset only moves forward. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hub/spool_format.h"

static void fix_crcs(unsigned char *buf, size_t size) {
  size_t off = 0;
  while (size - off >= SPOOL_HEADER) {
    uint32_t hdr[3];
    memcpy(hdr, buf + off, sizeof(hdr));
    if (hdr[0] != SPOOL_MAGIC || hdr[1] > size - off - SPOOL_HEADER) return;
    hdr[2] = spool_crc32(0, buf + off + SPOOL_HEADER, hdr[1]);
    memcpy(buf + off, hdr, sizeof(hdr));
    off += SPOOL_HEADER + hdr[1];
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t n = size - 1;
  /* An exact-size heap copy, so ASan sees any read past the end of the segment. */
  unsigned char *buf = malloc(n ? n : 1);
  if (!buf) return 0;
  memcpy(buf, data + 1, n);
  if (data[0] & 1) fix_crcs(buf, n);
  size_t off = 0, prev = 0;
  spool_record_t r;
  while (spool_record_next(buf, n, &off, &r) == 1) {
    if (off <= prev || off > n) abort();
    const unsigned char *t = (const unsigned char *)r.topic, *p = r.payload;
    if (t < buf || t + r.topic_len > buf + n || p < buf || p + r.payload_len > buf + n) abort();
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < r.topic_len; i++)
      sink ^= t[i];
    for (size_t i = 0; i < r.payload_len; i++)
      sink ^= p[i];
    (void)sink;
    prev = off;
  }
  free(buf);
  return 0;
}
