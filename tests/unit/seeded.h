/* A small deterministic generator (xorshift64) for the unit tests' random inputs: a
 * fixed seed, so that a failure can be replayed. Each test file has its own state. */
#ifndef IOTFIN_TESTS_SEEDED_H
#define IOTFIN_TESTS_SEEDED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static uint64_t seeded_state = 0x9e3779b97f4a7c15ULL;

static inline uint32_t rnd(void) {
  seeded_state ^= seeded_state << 13;
  seeded_state ^= seeded_state >> 7;
  seeded_state ^= seeded_state << 17;
  return (uint32_t)(seeded_state >> 11);
}

/* Appends up to max_pieces random pieces of text to buf (room for 4 * max_pieces
 * bytes): plain ASCII, every kind of byte JSON escapes, DEL, multibyte UTF-8 and JSON's
 * own punctuation; NUL bytes too when nul is true. Returns the length written. */
static inline size_t seeded_text(char *buf, size_t max_pieces, bool nul) {
  static const struct {
    const char *s;
    size_t len;
  } pieces[] = {{"a", 1},
                {"Z", 1},
                {"0", 1},
                {" ", 1},
                {"\"", 1},
                {"\\", 1},
                {"/", 1},
                {"\n", 1},
                {"\t", 1},
                {"\x01", 1},
                {"\x1f", 1},
                {"\x7f", 1},
                {"\xc3\xa9", 2},
                {"\xe2\x82\xac", 3},
                {"{", 1},
                {"}", 1},
                {":", 1},
                {",", 1},
                {"\xf0\x9f\x98\x80", 4},
                {"\0", 1}};
  size_t kinds = sizeof(pieces) / sizeof(pieces[0]) - (nul ? 0 : 1), n = 0;
  for (size_t i = rnd() % (max_pieces + 1); i > 0; i--) {
    size_t k = rnd() % kinds;
    memcpy(buf + n, pieces[k].s, pieces[k].len);
    n += pieces[k].len;
  }
  return n;
}

#endif
