/* Blocking HTTP for the command-line tools, on libcurl. */
#include <curl/curl.h>
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

typedef struct {
  char *data;
  size_t len;
} buf_t;

static size_t collect(char *p, size_t size, size_t n, void *arg) {
  buf_t *b = arg;
  char *d = realloc(b->data, b->len + size * n + 1);
  if (!d) return 0;
  memcpy(d + b->len, p, size * n);
  b->data = d;
  b->len += size * n;
  d[b->len] = 0;
  return size * n;
}

static const char *cafile; /* set once by the command's option parsing */

void cli_set_cafile(const char *path) { cafile = path; }

void cli_curl_tls(void *curl) {
  if (cafile) curl_easy_setopt(curl, CURLOPT_CAINFO, cafile);
}

int cli_mqtt_tls(struct mosquitto *m) {
  int rc = mosquitto_tls_set(m, cafile, cafile ? NULL : "/etc/ssl/certs", NULL, NULL, NULL);
  return rc == MOSQ_ERR_SUCCESS ? 0 : -1;
}

long cli_http(const char *method, const char *url, const char *token, json_t *body, json_t **out) {
  if (out) *out = NULL;
  CURL *c = curl_easy_init();
  if (!c) return 0;
  struct curl_slist *h = curl_slist_append(NULL, "Accept: application/json");
  char auth[4200];
  if (token) {
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    h = curl_slist_append(h, auth);
  }
  char *payload = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (payload) h = curl_slist_append(h, "Content-Type: application/json");
  buf_t b = {NULL, 0};
  curl_easy_setopt(c, CURLOPT_URL, url);
  cli_curl_tls(c);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  if (payload) curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  long status = 0;
  if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  if (out && b.data) *out = json_loadb(b.data, b.len, 0, NULL);
  free(b.data);
  free(payload);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return status;
}

bool cli_parse_mqtt_url(const char *url, char *host, size_t cap, int *port, bool *tls) {
  *tls = strncmp(url, "mqtts://", 8) == 0;
  if (!*tls && strncmp(url, "mqtt://", 7) != 0) return false;
  const char *hp = url + (*tls ? 8 : 7), *colon = strrchr(hp, ':');
  if (!colon || colon == hp || (size_t)(colon - hp) >= cap) return false;
  const char *h = hp;
  size_t hl = (size_t)(colon - hp);
  if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  memcpy(host, h, hl);
  host[hl] = 0;
  *port = atoi(colon + 1);
  return *port > 0 && *port < 65536;
}
