/* Mail templates and the two transports. Templates are plain text with {{key}}
 * placeholders; they are few, so they live here rather than in files to load. */
#include "mail/mail.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/timeutil.h"

typedef struct {
  const char *name, *subject, *body;
} template_t;

static const template_t templates[] = {
    {"registration_approved", "Welcome to iotfin, {{name}}",
     "Hello {{name}},\n\nyour registration was approved. You can now sign in and claim your "
     "devices.\n\nRegistration: {{registration_id}}\n"},
    {"registration_rejected", "Your iotfin registration",
     "Hello {{name}},\n\nwe could not verify your identity, so your registration was not "
     "approved.\n\nRegistration: {{registration_id}}\n"},
    {"device_activated", "Your device {{serial}} is active",
     "Hello,\n\nyour device {{serial}} was linked by its supplier and is now active.\n\n"
     "Device: {{device_id}}\n"},
    {"alarm_raised", "[iotfin alarm] {{name}}",
     "The alarm {{name}} was raised: queue {{queue}} has {{count}} dead letter(s).\n\n"
     "Inspect: GET /v1/admin/queues/{{queue}}/dead-letters\n"
     "After a fix: POST /v1/admin/queues/{{queue}}/redrive\n"},
};

/* Shortens s (NUL-terminated) to at most n bytes without splitting a UTF-8 sequence;
 * a sequence already cut short (by snprintf into a fixed buffer) is dropped too. */
static void utf8_cut(char *s, size_t n) {
  size_t len = strlen(s);
  if (len > n) len = n;
  size_t start = len;
  while (start > 0 && ((unsigned char)s[start - 1] & 0xC0) == 0x80 && len - start < 3)
    start--;
  if (start > 0) {
    unsigned char lead = (unsigned char)s[start - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    if (lead >= 0xC0 && len - (start - 1) < need) len = start - 1;
  }
  s[len] = 0;
}

bool mail_address_valid(const char *a) {
  /* Deliberately narrower than RFC 5322: a dot-atom local part and a host name, so
   * that an address is always exactly one recipient and never a header fragment
   * ("a,b@example.com", "<x>", quotes, spaces and controls are refused). */
  static const char local_ok[] = "!#$%&'*+-/=?^_`{|}~.";
  size_t n = a ? strlen(a) : 0;
  const char *at = a ? strchr(a, '@') : NULL;
  if (n < 3 || n > 254 || !at || at == a || at - a > 64 || strchr(at + 1, '@')) return false;
  if (a[0] == '.' || at[-1] == '.') return false;
  for (const char *c = a; c < at; c++) {
    if (!isalnum((unsigned char)*c) && !strchr(local_ok, *c)) return false;
    if (*c == '.' && c[1] == '.') return false;
  }
  const char *label = at + 1;
  for (const char *c = label;; c++) {
    if (*c == '.' || *c == 0) {
      size_t l = (size_t)(c - label);
      if (l < 1 || l > 63 || label[0] == '-' || c[-1] == '-') return false;
      if (!*c) break;
      label = c + 1;
    } else if (!isalnum((unsigned char)*c) && *c != '-') {
      return false;
    }
  }
  return true; /* a single label (ops@localhost) is a host name too */
}

/* Replaces {{key}} with the string (or number) vars[key]; unknown keys become "". */
static char *fill(const char *tpl, json_t *vars) {
  size_t cap = strlen(tpl) + 256, len = 0;
  char *out = malloc(cap);
  if (!out) return NULL;
  for (const char *p = tpl; *p;) {
    const char *open = strstr(p, "{{");
    const char *close = open ? strstr(open, "}}") : NULL;
    size_t lit = open && close ? (size_t)(open - p) : strlen(p);
    char val[512] = "";
    if (open && close) {
      char key[64];
      size_t kl = (size_t)(close - open - 2);
      if (kl >= sizeof(key)) kl = sizeof(key) - 1;
      memcpy(key, open + 2, kl);
      key[kl] = 0;
      json_t *v = json_object_get(vars, key);
      if (json_is_string(v))
        snprintf(val, sizeof(val), "%s", json_string_value(v));
      else if (json_is_integer(v))
        snprintf(val, sizeof(val), "%lld", (long long)json_integer_value(v));
      /* Values come from users and partners (a name, a partner username): no line
       * breaks or other controls reach a header or start a line of their own. */
      for (char *c = val; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = ' ';
      utf8_cut(val, strlen(val));
    }
    size_t need = len + lit + strlen(val) + 1;
    if (need > cap) {
      cap = need * 2;
      char *n = realloc(out, cap);
      if (!n) {
        free(out);
        return NULL;
      }
      out = n;
    }
    memcpy(out + len, p, lit);
    len += lit;
    memcpy(out + len, val, strlen(val));
    len += strlen(val);
    p = open && close ? close + 2 : p + lit;
  }
  out[len] = 0;
  return out;
}

int mail_render(const char *name, json_t *vars, mail_rendered_t *out) {
  memset(out, 0, sizeof(*out));
  for (size_t i = 0; i < sizeof(templates) / sizeof(templates[0]); i++) {
    if (strcmp(templates[i].name, name) != 0) continue;
    char *subj = fill(templates[i].subject, vars);
    out->body = fill(templates[i].body, vars);
    if (!subj || !out->body) {
      free(subj);
      free(out->body);
      out->body = NULL;
      return -ERR_INTERNAL;
    }
    /* Header injection guard: a subject is one line. */
    for (char *c = subj; *c; c++)
      if (*c == '\r' || *c == '\n') *c = ' ';
    utf8_cut(subj, sizeof(out->subject) - 1);
    snprintf(out->subject, sizeof(out->subject), "%s", subj);
    free(subj);
    return 0;
  }
  return -ERR_NOT_FOUND;
}

void mail_rendered_free(mail_rendered_t *m) {
  free(m->body);
  m->body = NULL;
}

static bool header_safe(const char *s) { return !strpbrk(s, "\r\n"); }

/* The Subject header's value: as is when ASCII, else RFC 2047 encoded words
 * ("=?UTF-8?B?...?=", each at most 75 characters and holding whole characters),
 * folded onto continuation lines. Caller frees. */
static char *subject_header(const char *subject) {
  bool ascii = true;
  for (const unsigned char *c = (const unsigned char *)subject; *c; c++)
    if (*c >= 0x80) ascii = false;
  if (ascii) return strdup(subject);
  size_t len = strlen(subject);
  size_t cap = len * 2 + 64 * (len / 30 + 1);
  char *out = malloc(cap);
  if (!out) return NULL;
  size_t o = 0, i = 0;
  while (i < len) {
    /* 45 bytes of text are 60 of base64: 72 with the delimiters. */
    size_t take = len - i > 45 ? 45 : len - i;
    while (take > 0 && i + take < len && ((unsigned char)subject[i + take] & 0xC0) == 0x80)
      take--;
    if (take == 0) take = len - i > 45 ? 45 : len - i; /* not UTF-8: cut anyway */
    char b64[128];
    sodium_bin2base64(b64, sizeof(b64), (const unsigned char *)subject + i, take,
                      sodium_base64_VARIANT_ORIGINAL);
    o += (size_t)snprintf(out + o, cap - o, "%s=?UTF-8?B?%s?=", i ? "\r\n " : "", b64);
    i += take;
  }
  return out;
}

static char *compose(const config_t *cfg, const char *to, const char *subject_raw, const char *body,
                     const char *message_id) {
  char *subject = subject_header(subject_raw);
  if (!subject) return NULL;
  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
  size_t cap = strlen(body) + strlen(subject) + 1024;
  char *msg = malloc(cap);
  if (msg)
    snprintf(msg, cap,
             "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@iotfin>\r\n"
             "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\n%s",
             cfg->mail_from, to, subject, date, message_id, body);
  free(subject);
  return msg;
}

static int write_eml(const config_t *cfg, const char *msg, const char *message_id, char *err,
                     size_t errlen) {
  char dir[1100], path[1300], tmp[1320];
  snprintf(dir, sizeof(dir), "%s/mail", cfg->data_dir);
  if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
    snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
    return -ERR_UPSTREAM_UNAVAILABLE;
  }
  snprintf(path, sizeof(path), "%s/%s.eml", dir, message_id);
  if (access(path, F_OK) == 0) return 0; /* sent before this retry */
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
    return -ERR_UPSTREAM_UNAVAILABLE;
  }
  bool ok = fputs(msg, f) >= 0;
  ok = (fflush(f) == 0) && ok && fsync(fileno(f)) == 0;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) < 0) {
    unlink(tmp);
    snprintf(err, errlen, "cannot write %s", path);
    return -ERR_UPSTREAM_UNAVAILABLE;
  }
  return 0;
}

typedef struct {
  const char *data;
  size_t len, off;
} upload_t;

static size_t read_cb(char *buf, size_t size, size_t n, void *arg) {
  upload_t *u = arg;
  size_t left = u->len - u->off, want = size * n;
  if (want > left) want = left;
  memcpy(buf, u->data + u->off, want);
  u->off += want;
  return want;
}

static int send_smtp(const config_t *cfg, const char *to, const char *msg, char *err,
                     size_t errlen) {
  CURL *c = curl_easy_init();
  if (!c) return -ERR_UPSTREAM_UNAVAILABLE;
  char from[300], rcpt[300];
  snprintf(from, sizeof(from), "<%s>", cfg->mail_from);
  snprintf(rcpt, sizeof(rcpt), "<%s>", to);
  struct curl_slist *rcpts = curl_slist_append(NULL, rcpt);
  upload_t u = {msg, strlen(msg), 0};
  curl_easy_setopt(c, CURLOPT_URL, cfg->smtp_url);
  curl_easy_setopt(c, CURLOPT_MAIL_FROM, from);
  curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpts);
  curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
  curl_easy_setopt(c, CURLOPT_READDATA, &u);
  curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
  CURLcode cc = curl_easy_perform(c);
  long code = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  curl_slist_free_all(rcpts);
  curl_easy_cleanup(c);
  if (cc == CURLE_OK) return 0;
  snprintf(err, errlen, "smtp: %s (server said %ld)", curl_easy_strerror(cc), code);
  return code >= 500 && code < 600 ? -ERR_VALIDATION_FAILED : -ERR_UPSTREAM_UNAVAILABLE;
}

int mail_send(const config_t *cfg, const char *to, const char *subject, const char *body,
              const char *message_id, char *err, size_t errlen) {
  if (!mail_address_valid(to) || !header_safe(subject)) {
    snprintf(err, errlen, "invalid recipient or subject");
    return -ERR_VALIDATION_FAILED;
  }
  char *msg = compose(cfg, to, subject, body, message_id);
  if (!msg) return -ERR_INTERNAL;
  int rc = cfg->smtp_url[0] ? send_smtp(cfg, to, msg, err, errlen)
                            : write_eml(cfg, msg, message_id, err, errlen);
  free(msg);
  return rc;
}
