/* Applies the broker plugin's spool segments to the store (see spool.h). Records are
 * applied in file order, which is the order the broker took them in, so a device's
 * events keep their order whichever path (spool or MQTT) stores them first. */
#include "hub/spool.h"

#include <dirent.h>
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
#include "hub/spool_format.h"
#include "services/devices.h"

#define APPLY_BATCH 256

static bool str_ok(json_t *v, size_t max) {
  return json_is_string(v) && json_string_length(v) >= 1 && json_string_length(v) <= max;
}

json_t *hub_event_parse(const void *payload, size_t len, const char **why) {
  json_t *e = json_loadb(payload ? payload : "", len, 0, NULL);
  json_t *time = json_object_get(e, "time");
  if (!json_is_object(e) || !str_ok(json_object_get(e, "id"), 128) ||
      !str_ok(json_object_get(e, "type"), 128) || !json_is_object(json_object_get(e, "data")) ||
      (time && !str_ok(time, 64))) {
    *why = e ? "event needs id, type and data (object)" : "not JSON";
    json_decref(e);
    return NULL;
  }
  if (time && !time_is_rfc3339(json_string_value(time))) {
    *why = "event time is not an RFC 3339 timestamp";
    json_decref(e);
    return NULL;
  }
  return e;
}

typedef struct {
  char ids[APPLY_BATCH][64];
  const char *idp[APPLY_BATCH];
  json_t *events[APPLY_BATCH];
  int n;
} batch_t;

static int flush(app_t *app, batch_t *b) {
  int rc = b->n ? devices_events_store_many(app, b->idp, b->events, b->n) : 0;
  for (int i = 0; i < b->n; i++)
    json_decref(b->events[i]);
  b->n = 0;
  return rc < 0 ? rc : 0;
}

/* Splits "devices/<id>/<rest>"; false when the topic is not a device's. */
static bool split(const spool_record_t *r, char device[64], char *rest, size_t restcap) {
  if (r->topic_len < 10 || r->topic_len >= 300 || strncmp(r->topic, "devices/", 8) != 0)
    return false;
  const char *id = r->topic + 8, *end = r->topic + r->topic_len;
  const char *slash = memchr(id, '/', (size_t)(end - id));
  if (!slash || slash == id || slash - id >= 64 || (size_t)(end - slash - 1) >= restcap)
    return false;
  snprintf(device, 64, "%.*s", (int)(slash - id), id);
  snprintf(rest, restcap, "%.*s", (int)(end - slash - 1), slash + 1);
  return true;
}

static int apply_ack(app_t *app, const char *device, const char *rest, const spool_record_t *r) {
  size_t n = strlen(rest);
  if (strncmp(rest, "commands/", 9) != 0 || n < 14 || n - 13 >= 40 ||
      strcmp(rest + n - 4, "/ack") != 0)
    return 0;
  char cid[40];
  snprintf(cid, sizeof(cid), "%.*s", (int)(n - 13), rest + 9);
  json_t *a = json_loadb(r->payload, r->payload_len, 0, NULL);
  const char *status = json_string_value(json_object_get(a, "status"));
  json_t *result = json_object_get(a, "result");
  int rc = 0;
  if (status && (strcmp(status, "succeeded") == 0 || strcmp(status, "failed") == 0)) {
    rc = devices_command_ack(app, device, cid, status, json_is_object(result) ? result : NULL);
    if (rc == -ERR_NOT_FOUND || rc == -ERR_CONFLICT) rc = 0; /* unknown, or already final */
  }
  json_decref(a);
  return rc;
}

/* Applies one segment's records. Returns the count, or a negative store error. */
static int apply_segment(app_t *app, const unsigned char *buf, size_t size) {
  batch_t *b = calloc(1, sizeof(*b));
  if (!b) return -ERR_INTERNAL;
  size_t off = 0;
  spool_record_t r;
  int applied = 0, rc = 0;
  while (rc >= 0 && spool_record_next(buf, size, &off, &r)) {
    char device[64], rest[256];
    if (!split(&r, device, rest, sizeof(rest))) continue;
    if (strcmp(rest, "events") == 0) {
      const char *why;
      json_t *e =
          r.payload_len <= 16 * 1024 ? hub_event_parse(r.payload, r.payload_len, &why) : NULL;
      if (!e) continue; /* the MQTT path records malformed messages; nothing to store */
      snprintf(b->ids[b->n], 64, "%s", device);
      b->idp[b->n] = b->ids[b->n];
      b->events[b->n++] = e;
      if (b->n == APPLY_BATCH) rc = flush(app, b);
    } else {
      /* An ack after events keeps its place: store what came before it first. */
      rc = flush(app, b);
      if (rc >= 0) rc = apply_ack(app, device, rest, &r);
    }
    applied++;
  }
  if (rc >= 0)
    rc = flush(app, b);
  else
    flush(app, b); /* only frees */
  free(b);
  return rc < 0 ? rc : applied;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static unsigned char *read_file(int dfd, const char *name, size_t *size) {
  int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  unsigned char *buf = NULL;
  if (fd < 0) return NULL;
  if (fstat(fd, &sb) == 0 && (buf = malloc((size_t)sb.st_size + 1))) {
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
      ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += (size_t)n;
    }
    *size = got;
  }
  close(fd);
  return buf;
}

int hub_spool_apply(app_t *app, const char *dir, hub_spool_mode_t mode) {
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno == ENOENT ? 0 : -ERR_UNAVAILABLE;
  DIR *d = fdopendir(dup(dfd));
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while (d && (e = readdir(d))) {
    size_t l = strlen(e->d_name);
    if (strncmp(e->d_name, SPOOL_PREFIX, 4) != 0 || l < 8 ||
        strcmp(e->d_name + l - 4, SPOOL_SUFFIX) != 0)
      continue;
    if (n == cap) {
      char **g = realloc(names, (cap = cap ? cap * 2 : 16) * sizeof(char *));
      if (!g) break;
      names = g;
    }
    names[n++] = strdup(e->d_name);
  }
  if (d) closedir(d);
  if (n) qsort(names, n, sizeof(char *), cmp_names); /* qsort(NULL, 0) is undefined */
  int total = 0, rc = 0;
  size_t upto = mode == HUB_SPOOL_CLOSED && n ? n - 1 : n;
  for (size_t i = 0; i < upto && rc >= 0; i++) {
    if (!names[i]) continue;
    size_t size = 0;
    unsigned char *buf = read_file(dfd, names[i], &size);
    if (!buf) {
      rc = -ERR_UNAVAILABLE;
      break;
    }
    rc = apply_segment(app, buf, size);
    free(buf);
    if (rc < 0) {
      log_warn("spool", "could not store the device messages of %s/%s yet; kept for later", dir,
               names[i]);
      break;
    }
    total += rc;
    if (mode == HUB_SPOOL_CATCH_UP && i == n - 1) break; /* the broker appends to it */
    if (unlinkat(dfd, names[i], 0) < 0)
      log_error("spool", "cannot delete %s/%s: %s", dir, names[i], strerror(errno));
  }
  if (total > 0) fsync(dfd);
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  close(dfd);
  return rc < 0 ? rc : total;
}
