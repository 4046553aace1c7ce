/* Time helpers shared by every module, so all timestamps look the same. */
#include "core/timeutil.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
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

/* Reads n digits at p into *v; false when any is not a digit. */
static bool read_digits(const char *p, int n, int *v) {
  *v = 0;
  for (int i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return false;
    *v = *v * 10 + (p[i] - '0');
  }
  return true;
}

bool time_is_rfc3339(const char *s) {
  static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int y, mo, d, h, mi, se;
  if (!s || strlen(s) < 20) return false;
  if (!read_digits(s, 4, &y) || s[4] != '-' || !read_digits(s + 5, 2, &mo) || s[7] != '-' ||
      !read_digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') || !read_digits(s + 11, 2, &h) ||
      s[13] != ':' || !read_digits(s + 14, 2, &mi) || s[16] != ':' || !read_digits(s + 17, 2, &se))
    return false;
  if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 60) return false;
  if (mo == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))) return false;
  const char *p = s + 19;
  if (*p == '.') {
    int n = 0;
    while (p[1 + n] >= '0' && p[1 + n] <= '9')
      n++;
    if (n < 1 || n > 9) return false;
    p += 1 + n;
  }
  if ((*p == 'Z' || *p == 'z') && p[1] == 0) return true;
  int oh, om;
  return (*p == '+' || *p == '-') && read_digits(p + 1, 2, &oh) && p[3] == ':' &&
         read_digits(p + 4, 2, &om) && p[6] == 0 && oh <= 23 && om <= 59;
}

void time_deadline(int64_t ms, struct timespec *out) {
  clock_gettime(CLOCK_REALTIME, out);
  if (ms <= 0) return;
  out->tv_sec += ms / 1000;
  out->tv_nsec += (ms % 1000) * 1000000L;
  out->tv_sec += out->tv_nsec / 1000000000L;
  out->tv_nsec %= 1000000000L;
}
