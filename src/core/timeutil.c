/* Time helpers shared by every module, so all timestamps look the same. */
#include "core/timeutil.h"

#include <stdio.h>
#include <time.h>

int64_t time_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t time_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void digits(char *p, int v, int n) {
  for (int i = n - 1; i >= 0; i--, v /= 10)
    p[i] = (char)('0' + v % 10);
}

char *time_format_rfc3339(int64_t ms, char *buf, size_t cap) {
  if (cap < 25) {
    if (cap) buf[0] = 0;
    return buf;
  }
  time_t secs = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  /* Hand-formatted: timestamps are made inside store transactions, where printf's
   * cost shows. Layout: 2026-11-27T07:00:00.123Z */
  digits(buf, tm.tm_year + 1900, 4);
  buf[4] = '-';
  digits(buf + 5, tm.tm_mon + 1, 2);
  buf[7] = '-';
  digits(buf + 8, tm.tm_mday, 2);
  buf[10] = 'T';
  digits(buf + 11, tm.tm_hour, 2);
  buf[13] = ':';
  digits(buf + 14, tm.tm_min, 2);
  buf[16] = ':';
  digits(buf + 17, tm.tm_sec, 2);
  buf[19] = '.';
  digits(buf + 20, (int)(ms % 1000), 3);
  buf[23] = 'Z';
  buf[24] = 0;
  return buf;
}
