/* The device-message journal ("spool") that makes a broker's PUBACK a promise.
 *
 * The broker plugin appends every QoS 1 device event and command ack to a segment file
 * and flushes it to disk (fdatasync) before the broker answers PUBACK; iotfin applies
 * closed segments to its store and deletes them. Both sides include this header: the
 * plugin is a separate shared object and cannot link iotfin's library, hence static
 * inline functions rather than a module.
 *
 * A segment is a sequence of records, each a header and a body:
 *   header: magic "IFJ1" (u32), body length (u32), CRC-32 of the body (u32)
 *   body:   received at, unix ms (i64), topic length (u16), topic, payload
 * in the machine's byte order (writer and reader always share the machine). A reader
 * stops at the first record that is short or fails its CRC: a torn tail is a write
 * that never returned, so it was never acknowledged. */
#ifndef IOTFIN_HUB_SPOOL_FORMAT_H
#define IOTFIN_HUB_SPOOL_FORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SPOOL_MAGIC 0x314A4649u /* "IFJ1" read as little-endian */
#define SPOOL_HEADER 12
#define SPOOL_BODY_FIXED 10 /* received_ms + topic length */
/* A segment is closed once it grows past this; iotfin only applies closed ones while
 * the broker runs, so the bound is also how much waits for the next sweep. */
#define SPOOL_SEGMENT_BYTES (4u * 1024u * 1024u)
#define SPOOL_PREFIX "seg-"
#define SPOOL_SUFFIX ".ifj"

/* Plain bitwise CRC-32 (IEEE): small, no table, and cheap beside the fdatasync that
 * follows every record. */
static inline uint32_t spool_crc32(uint32_t crc, const void *data, size_t len) {
  const unsigned char *p = data;
  crc = ~crc;
  while (len--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++)
      crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

/* One record seen by a reader; pointers borrow the segment buffer. */
typedef struct {
  int64_t received_ms;
  const char *topic;
  size_t topic_len;
  const void *payload;
  size_t payload_len;
} spool_record_t;

/* Parses the record at buf[*off], advancing *off. Returns 1 for a record, 0 at the end
 * or at a torn or corrupt tail (nothing after it is trusted). */
static inline int spool_record_next(const unsigned char *buf, size_t size, size_t *off,
                                    spool_record_t *r) {
  if (size - *off < SPOOL_HEADER) return 0;
  uint32_t hdr[3];
  memcpy(hdr, buf + *off, sizeof(hdr));
  if (hdr[0] != SPOOL_MAGIC || hdr[1] < SPOOL_BODY_FIXED || hdr[1] > size - *off - SPOOL_HEADER)
    return 0;
  const unsigned char *body = buf + *off + SPOOL_HEADER;
  if (spool_crc32(0, body, hdr[1]) != hdr[2]) return 0;
  uint16_t tl;
  memcpy(&r->received_ms, body, 8);
  memcpy(&tl, body + 8, 2);
  if ((size_t)tl + SPOOL_BODY_FIXED > hdr[1]) return 0;
  r->topic = (const char *)body + SPOOL_BODY_FIXED;
  r->topic_len = tl;
  r->payload = body + SPOOL_BODY_FIXED + tl;
  r->payload_len = hdr[1] - SPOOL_BODY_FIXED - tl;
  *off += SPOOL_HEADER + hdr[1];
  return 1;
}

#endif
