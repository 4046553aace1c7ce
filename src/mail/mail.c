/* Mail templates and the two transports. Templates are plain text with {{key}}
 * placeholders; they are few, so they live here rather than in files to load. */
#include "mail/mail.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
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

static char *compose(const config_t *cfg, const char *to, const char *subject, const char *body,
                     const char *message_id) {
  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
  size_t cap = strlen(body) + 1024;
  char *msg = malloc(cap);
  if (!msg) return NULL;
  snprintf(msg, cap,
           "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@iotfin>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n%s",
           cfg->mail_from, to, subject, date, message_id, body);
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
  if (!header_safe(to) || !header_safe(subject) || !strchr(to, '@')) {
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
