/* mosquitto_iotfin_auth: the Mosquitto 2.0 plugin that lets iotfin own its broker.
 *
 * - Admits iotfin's own clients (a shared secret) with full access: one per iotfin
 *   instance when several share this broker.
 * - Admits a device only with client id = username = its device id and password =
 *   a valid device token: an EdDSA JWT whose key is in the JWKS iotfin last sent,
 *   with iss "iotfin", tier "device", sub = the device id, unexpired, and neither
 *   its session nor its device revoked. Anonymous clients are refused.
 * - Confines each device to topics under devices/<its id>/.
 * - Disconnects a device when the token it connected with expires (checked about
 *   once a second on the broker's tick).
 * - Makes a PUBACK a promise: every QoS 1 device event and command ack is appended to
 *   the spool (src/hub/spool_format.h) and flushed to disk before the broker answers;
 *   a message that cannot be made durable fails the callback, so the broker drops the
 *   connection instead of acknowledging it.
 * - Stamps device requests with the user property iotfin-received-ms, so iotfin can
 *   keep a request's 3 s promise even if it was itself paused.
 * - Publishes presence on iotfin/presence/<id>: {"online": true|false} when a
 *   device's first connection opens or its last one closes, and
 *   {"subscribed": true} when it subscribes to its commands topic, the moment
 *   from which commands sent to it are not lost.
 * - Takes control messages from iotfin's client only: iotfin/control/keys (the
 *   JWKS), iotfin/control/revoke ({sessions: [...], devices: [...]}, whose devices
 *   are disconnected at once) and iotfin/control/reset (the same, replacing).
 * - Ends the broker when iotfin dies, even by kill -9, so no orphan broker keeps
 *   acknowledging device messages that nobody stores.
 *
 * Build: see CMakeLists.txt (target mosquitto_iotfin_auth; links libsodium, jansson).
 * Config lines (iotfin writes them into the generated mosquitto.conf):
 *   plugin /path/to/mosquitto_iotfin_auth.so
 *   plugin_opt_internal_user iotfin
 *   plugin_opt_internal_password <secret>
 *   plugin_opt_parent_fd <fd>     (optional: read end of a pipe only iotfin writes)
 *   plugin_opt_spool_fd <fd>      (or plugin_opt_spool_dir <dir>: where the spool goes;
 *                                  without either, PUBACKs are not durable)
 *   plugin_opt_state_fd <fd>      (optional: {keys, sessions, devices} to start with, so
 *                                  devices are admitted before iotfin's client connects)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include "auth/b64url.h"
#include "hub/spool_format.h"

#define MAX_IOTFIN_CLIENTS 16

#define MAX_KEYS 8

typedef struct {
  char kid[32];
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
} pubkey_t;

/* A string set (open addressing, no deletion) for revoked sessions and devices. It
 * grows: a fixed table once stopped taking entries, and a retired device came back. */
typedef struct {
  char **slots;
  size_t cap, n;
} strset_t;

/* Live device connections: client pointer -> device id, and per-device counts. */
typedef struct {
  const void *client;
  char device[64];
  bool subscribed; /* to its commands topic */
  int64_t exp;     /* its token's exp (unix seconds) */
} conn_t;

typedef struct {
  mosquitto_plugin_id_t *id;
  char *internal_user, *internal_password;
  int parent_fd;
  pubkey_t keys[MAX_KEYS];
  int nkeys;
  strset_t revoked_sessions, revoked_devices;
  conn_t *conns;
  int nconns, capconns;
  /* The spool: a directory (fd) and the segment being appended to. */
  int spool_dir;
  int seg_fd;
  uint64_t seg_no;
  off_t seg_size;   /* where the next record goes */
  off_t seg_zeroed; /* the segment's zeroed length (0: records append) */
  time_t spool_warned;
  /* iotfin's client is connected and subscribed to device events. Until then devices
   * are refused: a message taken with nobody listening would sit in the open spool
   * segment and reach the store after the device's newer ones. */
  /* iotfin clients subscribed to device events: the managed broker's one, or the
   * leading instance of several (during a hand-over, briefly two). */
  const void *iotfin_clients[MAX_IOTFIN_CLIENTS];
  int niotfin;
  bool iotfin_listening;
} plugin_state_t;

/* Everything here runs on the broker's single thread, except watch_parent. */
static plugin_state_t st;

static unsigned hash(const char *s) {
  unsigned h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static bool set_has(const strset_t *s, const char *v) {
  if (!s->cap) return false;
  for (size_t i = 0, h = hash(v); i < s->cap; i++) {
    const char *x = s->slots[(h + i) % s->cap];
    if (!x) return false;
    if (strcmp(x, v) == 0) return true;
  }
  return false;
}

static void set_put(char **slots, size_t cap, char *v) {
  for (size_t h = hash(v);; h++) {
    if (!slots[h % cap]) {
      slots[h % cap] = v;
      return;
    }
  }
}

/* Returns false only when memory runs out; the caller then refuses what it checks. */
static bool set_add(strset_t *s, const char *v) {
  if (set_has(s, v)) return true;
  if ((s->n + 1) * 4 > s->cap * 3) {
    size_t cap = s->cap ? s->cap * 2 : 1024;
    char **slots = calloc(cap, sizeof(char *));
    if (!slots) return false;
    for (size_t i = 0; i < s->cap; i++)
      if (s->slots[i]) set_put(slots, cap, s->slots[i]);
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
  }
  char *copy = strdup(v);
  if (!copy) return false;
  set_put(s->slots, s->cap, copy);
  s->n++;
  return true;
}

static void set_clear(strset_t *s) {
  for (size_t i = 0; i < s->cap; i++)
    free(s->slots[i]);
  free(s->slots);
  memset(s, 0, sizeof(*s));
}

/* Constant-time string equality: the secret must not leak through timing. */
static bool secret_equal(const char *a, const char *b) {
  unsigned char ha[32], hb[32];
  crypto_generichash(ha, sizeof(ha), (const unsigned char *)a, strlen(a), NULL, 0);
  crypto_generichash(hb, sizeof(hb), (const unsigned char *)b, strlen(b), NULL, 0);
  return sodium_memcmp(ha, hb, sizeof(ha)) == 0;
}

static bool is_internal(const char *username) {
  return username && st.internal_user && strcmp(username, st.internal_user) == 0;
}

/* Verifies a device token for device_id; true when every check passes, with the
 * token's exp in *exp_out. */
static bool device_token_ok(const char *device_id, const char *jwt, int64_t *exp_out) {
  if (!jwt || strlen(jwt) > 4096) return false;
  const char *d1 = strchr(jwt, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
  if (!d1 || !d2 || strchr(d2 + 1, '.')) return false;
  bool ok = false;
  size_t hl = 0, pl = 0, sl = 0;
  unsigned char *h = auth_b64url_decode(jwt, (size_t)(d1 - jwt), &hl);
  unsigned char *p = auth_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), &pl);
  unsigned char *sig = auth_b64url_decode(d2 + 1, strlen(d2 + 1), &sl);
  json_t *hj = h ? json_loadb((char *)h, hl, 0, NULL) : NULL;
  json_t *pj = p ? json_loadb((char *)p, pl, 0, NULL) : NULL;
  if (!hj || !pj || !sig || sl != crypto_sign_BYTES) goto out;
  const char *alg = json_string_value(json_object_get(hj, "alg"));
  const char *kid = json_string_value(json_object_get(hj, "kid"));
  if (!alg || strcmp(alg, "EdDSA") != 0 || !kid) goto out;
  const pubkey_t *key = NULL;
  for (int i = 0; i < st.nkeys; i++)
    if (strcmp(st.keys[i].kid, kid) == 0) key = &st.keys[i];
  if (!key || crypto_sign_verify_detached(sig, (const unsigned char *)jwt, (size_t)(d2 - jwt),
                                          key->pk) != 0)
    goto out;
  const char *iss = json_string_value(json_object_get(pj, "iss"));
  const char *tier = json_string_value(json_object_get(pj, "tier"));
  const char *sub = json_string_value(json_object_get(pj, "sub"));
  const char *sid = json_string_value(json_object_get(pj, "sid"));
  json_t *exp = json_object_get(pj, "exp");
  ok = iss && strcmp(iss, "iotfin") == 0 && tier && strcmp(tier, "device") == 0 && sub &&
       strcmp(sub, device_id) == 0 && sid && json_is_integer(exp) &&
       json_integer_value(exp) > (json_int_t)time(NULL) && !set_has(&st.revoked_sessions, sid) &&
       !set_has(&st.revoked_devices, device_id);
  if (ok) *exp_out = (int64_t)json_integer_value(exp);
out:
  json_decref(hj);
  json_decref(pj);
  free(h);
  free(p);
  free(sig);
  return ok;
}

static void publish_presence(const char *device, const char *json) {
  char topic[128];
  snprintf(topic, sizeof(topic), "iotfin/presence/%s", device);
  mosquitto_broker_publish_copy(NULL, topic, (int)strlen(json), json, 1, false, NULL);
}

static int device_conn_count(const char *device) {
  int n = 0;
  for (int i = 0; i < st.nconns; i++)
    if (strcmp(st.conns[i].device, device) == 0) n++;
  return n;
}

static int on_basic_auth(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_basic_auth *ed = event_data;
  if (is_internal(ed->username))
    return ed->password && st.internal_password && secret_equal(ed->password, st.internal_password)
               ? MOSQ_ERR_SUCCESS
               : MOSQ_ERR_AUTH;
  if (!st.iotfin_listening) return MOSQ_ERR_AUTH; /* the device retries in a moment */
  const char *cid = mosquitto_client_id(ed->client);
  int64_t exp = 0;
  if (!ed->username || !cid || strcmp(cid, ed->username) != 0 || strlen(ed->username) >= 64 ||
      !device_token_ok(ed->username, ed->password, &exp))
    return MOSQ_ERR_AUTH;
  if (st.nconns == st.capconns) {
    int cap = st.capconns ? st.capconns * 2 : 64;
    conn_t *c = realloc(st.conns, sizeof(conn_t) * (size_t)cap);
    if (!c) return MOSQ_ERR_NOMEM;
    st.conns = c;
    st.capconns = cap;
  }
  bool first = device_conn_count(ed->username) == 0;
  st.conns[st.nconns].client = ed->client;
  st.conns[st.nconns].subscribed = false;
  st.conns[st.nconns].exp = exp;
  snprintf(st.conns[st.nconns].device, sizeof(st.conns[0].device), "%s", ed->username);
  st.nconns++;
  if (first) publish_presence(ed->username, "{\"online\":true}");
  return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_disconnect *ed = event_data;
  for (int i = 0; i < st.niotfin; i++)
    if (st.iotfin_clients[i] == ed->client) {
      st.iotfin_clients[i] = st.iotfin_clients[--st.niotfin];
      st.iotfin_listening = st.niotfin > 0;
      return MOSQ_ERR_SUCCESS;
    }
  for (int i = 0; i < st.nconns; i++) {
    if (st.conns[i].client != ed->client) continue;
    char device[64];
    snprintf(device, sizeof(device), "%s", st.conns[i].device);
    st.conns[i] = st.conns[--st.nconns];
    if (device_conn_count(device) == 0) publish_presence(device, "{\"online\":false}");
    break;
  }
  return MOSQ_ERR_SUCCESS;
}

static bool under_prefix(const char *username, const char *topic) {
  size_t ul = strlen(username);
  return strncmp(topic, "devices/", 8) == 0 && strncmp(topic + 8, username, ul) == 0 &&
         topic[8 + ul] == '/' && topic[9 + ul] != 0;
}

static int on_acl_check(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_acl_check *ed = event_data;
  const char *user = mosquitto_client_username(ed->client);
  if (is_internal(user)) {
    if (ed->access == MOSQ_ACL_SUBSCRIBE && strstr(ed->topic, "devices/+/events")) {
      bool known = false;
      for (int i = 0; i < st.niotfin; i++)
        known = known || st.iotfin_clients[i] == ed->client;
      if (!known && st.niotfin < MAX_IOTFIN_CLIENTS) st.iotfin_clients[st.niotfin++] = ed->client;
      st.iotfin_listening = true;
    }
    return MOSQ_ERR_SUCCESS;
  }
  if (!user || !under_prefix(user, ed->topic)) return MOSQ_ERR_ACL_DENIED;
  /* Wildcards may not climb out of the prefix: "devices/<id>/#" is fine. */
  if (ed->access == MOSQ_ACL_SUBSCRIBE) {
    char cmd[128];
    bool matches = false;
    snprintf(cmd, sizeof(cmd), "devices/%s/commands", user);
    if (mosquitto_topic_matches_sub(ed->topic, cmd, &matches) == MOSQ_ERR_SUCCESS && matches) {
      for (int i = 0; i < st.nconns; i++)
        if (st.conns[i].client == ed->client) st.conns[i].subscribed = true;
      publish_presence(user, "{\"subscribed\":true}");
    }
  }
  return MOSQ_ERR_SUCCESS;
}

/* Kicks the devices whose token has expired, about once a second. The client ids are
 * copied first: a kick may end the connection, and on_disconnect edit st.conns, at once. */
static int on_tick(int event, void *event_data, void *userdata) {
  static time_t last;
  time_t now = time(NULL);
  if (now == last || st.nconns == 0) return MOSQ_ERR_SUCCESS;
  last = now;
  char(*expired)[64] = NULL;
  int n = 0;
  for (int i = 0; i < st.nconns; i++) {
    if (st.conns[i].exp > (int64_t)now) continue;
    if (!expired && !(expired = calloc((size_t)st.nconns, sizeof(*expired)))) break;
    snprintf(expired[n++], sizeof(expired[0]), "%s", st.conns[i].device);
  }
  for (int i = 0; i < n; i++) {
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotfin_auth: device %s: token expired, disconnecting",
                         expired[i]);
    mosquitto_kick_client_by_clientid(expired[i], false);
  }
  free(expired);
  return MOSQ_ERR_SUCCESS;
}

static void load_keys(json_t *jwks) {
  int n = 0;
  size_t i;
  json_t *k;
  json_array_foreach(json_object_get(jwks, "keys"), i, k) {
    const char *kid = json_string_value(json_object_get(k, "kid"));
    const char *x = json_string_value(json_object_get(k, "x"));
    size_t len = 0;
    unsigned char *pk = x ? auth_b64url_decode(x, strlen(x), &len) : NULL;
    if (kid && pk && len == crypto_sign_PUBLICKEYBYTES && n < MAX_KEYS &&
        strlen(kid) < sizeof(st.keys[0].kid)) {
      snprintf(st.keys[n].kid, sizeof(st.keys[n].kid), "%s", kid);
      memcpy(st.keys[n].pk, pk, len);
      n++;
    }
    free(pk);
  }
  st.nkeys = n;
  mosquitto_log_printf(MOSQ_LOG_INFO, "iotfin_auth: %d verification key(s) loaded", n);
}

static void apply_revocations(json_t *msg) {
  size_t i;
  json_t *v;
  json_array_foreach(json_object_get(msg, "sessions"), i, v) {
    if (json_is_string(v)) set_add(&st.revoked_sessions, json_string_value(v));
  }
  json_array_foreach(json_object_get(msg, "devices"), i, v) {
    if (!json_is_string(v)) continue;
    set_add(&st.revoked_devices, json_string_value(v));
    mosquitto_kick_client_by_username(json_string_value(v), false);
  }
  /* A revoked session may belong to a connected device: kick those named too. */
  json_array_foreach(json_object_get(msg, "kick"), i, v) {
    if (json_is_string(v)) mosquitto_kick_client_by_username(json_string_value(v), false);
  }
}

/* --- the spool ---------------------------------------------------------------- */

/* Opens the next segment after the highest one in the directory. Returns the fd or -1. */
static int spool_open_segment(void) {
  if (st.seg_no == 0) {
    int dfd = dup(st.spool_dir);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
      if (dfd >= 0) close(dfd);
      return -1;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
      unsigned long long no;
      if (sscanf(e->d_name, SPOOL_PREFIX "%16llx", &no) == 1 && no > st.seg_no) st.seg_no = no;
    }
    closedir(d);
  }
  char name[64];
  snprintf(name, sizeof(name), SPOOL_PREFIX "%016llx" SPOOL_SUFFIX,
           (unsigned long long)++st.seg_no);
  int fd = openat(st.spool_dir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                  0640); /* group: the iotfin instances that store it */
  if (fd < 0) return -1;
  /* Zeros first, flushed once: a record then overwrites blocks that already exist, and
   * its fdatasync flushes data only, where an append must also commit the file's new size
   * (measured here: about 1.3x the syncs per second). It also keeps room for the
   * segment on a disk that fills up. If the zeros do not fit, records append instead. */
  static const unsigned char zeros[65536];
  off_t zeroed = 0;
  while (zeroed < (off_t)SPOOL_SEGMENT_BYTES) {
    ssize_t w = pwrite(fd, zeros, sizeof(zeros), zeroed);
    if (w <= 0) break;
    zeroed += w;
  }
  if (zeroed < (off_t)SPOOL_SEGMENT_BYTES || fdatasync(fd) < 0) {
    zeroed = 0;
    if (ftruncate(fd, 0) < 0) {
      close(fd);
      unlinkat(st.spool_dir, name, 0);
      return -1;
    }
  }
  /* The new name must survive a crash too, or its records would be unreachable. */
  if (fsync(st.spool_dir) < 0) {
    close(fd);
    unlinkat(st.spool_dir, name, 0);
    return -1;
  }
  st.seg_size = 0;
  st.seg_zeroed = zeroed;
  return fd;
}

static bool write_at(int fd, const unsigned char *p, size_t n, off_t at) {
  while (n) {
    ssize_t w = pwrite(fd, p, n, at);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    at += w;
    n -= (size_t)w;
  }
  return true;
}

/* Appends one record and flushes it. False when it is not durable; the segment is then
 * cut back to its last good record (or abandoned), so nothing torn sits in the middle. */
static bool spool_append(const char *topic, const void *payload, uint32_t len) {
  if (st.seg_fd >= 0 && st.seg_size >= (off_t)SPOOL_SEGMENT_BYTES) {
    close(st.seg_fd);
    st.seg_fd = -1;
  }
  if (st.seg_fd < 0 && (st.seg_fd = spool_open_segment()) < 0) return false;
  size_t tl = strlen(topic);
  if (tl > UINT16_MAX) return false;
  size_t body = SPOOL_BODY_FIXED + tl + len;
  unsigned char *rec = malloc(SPOOL_HEADER + body);
  if (!rec) return false;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  uint16_t tl16 = (uint16_t)tl;
  unsigned char *b = rec + SPOOL_HEADER;
  memcpy(b, &ms, 8);
  memcpy(b + 8, &tl16, 2);
  memcpy(b + SPOOL_BODY_FIXED, topic, tl);
  if (len) memcpy(b + SPOOL_BODY_FIXED + tl, payload, len);
  uint32_t hdr[3] = {SPOOL_MAGIC, (uint32_t)body, spool_crc32(0, b, body)};
  memcpy(rec, hdr, sizeof(hdr));
  size_t n = SPOOL_HEADER + body;
  bool ok = write_at(st.seg_fd, rec, n, st.seg_size) && fdatasync(st.seg_fd) == 0;
  int err = errno;
  if (ok) {
    free(rec);
    st.seg_size += (off_t)n;
    return true;
  }
  /* Nothing torn may stay before the next record: zero it again where the segment was
   * zeroed, cut it off where it was not; if even that fails, the segment is done. */
  memset(rec, 0, n);
  bool clean = write_at(st.seg_fd, rec, n, st.seg_size);
  if (clean && st.seg_size + (off_t)n > st.seg_zeroed)
    clean = ftruncate(st.seg_fd, st.seg_size > st.seg_zeroed ? st.seg_size : st.seg_zeroed) == 0;
  free(rec);
  if (!clean || fdatasync(st.seg_fd) < 0) {
    close(st.seg_fd);
    st.seg_fd = -1;
  }
  time_t now = time(NULL);
  if (now != st.spool_warned) { /* one line a second, whatever the rate of failures */
    st.spool_warned = now;
    mosquitto_log_printf(MOSQ_LOG_ERR,
                         "iotfin_auth: spool write failed (%s); device messages are refused "
                         "until storage recovers",
                         strerror(err));
  }
  return false;
}

/* Device events and command acks change state: they are what a PUBACK promises. */
static bool journaled(const char *user, const char *topic) {
  const char *rest = topic + 8 + strlen(user) + 1;
  if (strcmp(rest, "events") == 0) return true;
  size_t n = strlen(rest);
  return strncmp(rest, "commands/", 9) == 0 && n > 13 && strcmp(rest + n - 4, "/ack") == 0;
}

static int on_message(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_message *ed = event_data;
  const char *user = mosquitto_client_username(ed->client);
  if (strncmp(ed->topic, "iotfin/", 7) != 0) {
    if (is_internal(user) || !user || !under_prefix(user, ed->topic)) return MOSQ_ERR_SUCCESS;
    if (!st.iotfin_listening && journaled(user, ed->topic))
      return MOSQ_ERR_UNKNOWN; /* nobody would store it in order: not acknowledged */
    if (ed->qos >= 1 && st.spool_dir >= 0 && journaled(user, ed->topic) &&
        !spool_append(ed->topic, ed->payload, ed->payloadlen))
      return MOSQ_ERR_UNKNOWN; /* not PUBACKed: the broker closes the connection */
    if (strncmp(ed->topic + 8 + strlen(user), "/requests/", 10) == 0) {
      struct timespec ts;
      char v[24];
      clock_gettime(CLOCK_REALTIME, &ts);
      snprintf(v, sizeof(v), "%lld", (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
      mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY,
                                         "iotfin-received-ms", v);
    }
    return MOSQ_ERR_SUCCESS;
  }
  if (!is_internal(user)) return MOSQ_ERR_ACL_DENIED;
  if (strncmp(ed->topic, "iotfin/control/", 15) != 0) return MOSQ_ERR_SUCCESS;
  json_t *msg = json_loadb(ed->payload, ed->payloadlen, 0, NULL);
  if (!msg) return MOSQ_ERR_SUCCESS;
  const char *what = ed->topic + 15;
  if (strcmp(what, "keys") == 0) {
    load_keys(msg);
  } else if (strcmp(what, "reset") == 0) {
    set_clear(&st.revoked_sessions);
    set_clear(&st.revoked_devices);
    apply_revocations(msg);
    /* iotfin (re)connected and forgot who is here: tell it again. */
    for (int i = 0; i < st.nconns; i++) {
      publish_presence(st.conns[i].device, "{\"online\":true}");
      if (st.conns[i].subscribed) publish_presence(st.conns[i].device, "{\"subscribed\":true}");
    }
  } else if (strcmp(what, "revoke") == 0) {
    apply_revocations(msg);
  }
  json_decref(msg);
  return MOSQ_ERR_SUCCESS;
}

/* The state iotfin hands over at start: {keys: JWKS, sessions: [...], devices: [...]}. */
static void load_state(int fd) {
  struct stat sb;
  if (fstat(fd, &sb) < 0 || sb.st_size <= 0 || sb.st_size > 256 * 1024 * 1024) return;
  char *buf = malloc((size_t)sb.st_size);
  if (!buf) return;
  ssize_t n = pread(fd, buf, (size_t)sb.st_size, 0);
  json_t *msg = n == sb.st_size ? json_loadb(buf, (size_t)n, 0, NULL) : NULL;
  free(buf);
  if (!msg) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "iotfin_auth: start state unreadable");
    return;
  }
  load_keys(json_object_get(msg, "keys"));
  apply_revocations(msg);
  json_decref(msg);
}

/* Blocks until the write end of the pipe closes, which happens when iotfin exits
 * for any reason; then asks the broker to stop as if it got SIGTERM. */
static void *watch_parent(void *arg) {
  struct pollfd p = {.fd = st.parent_fd, .events = POLLIN};
  for (;;) {
    int n = poll(&p, 1, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (p.revents & (POLLHUP | POLLERR | POLLIN))) break;
  }
  kill(getpid(), SIGTERM);
  return NULL;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions) {
  return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                          struct mosquitto_opt *opts, int opt_count) {
  memset(&st, 0, sizeof(st));
  st.id = identifier;
  st.parent_fd = -1;
  st.spool_dir = -1;
  st.seg_fd = -1;
  int state_fd = -1;
  if (sodium_init() < 0) return MOSQ_ERR_UNKNOWN;
  for (int i = 0; i < opt_count; i++) {
    if (strcmp(opts[i].key, "internal_user") == 0)
      st.internal_user = strdup(opts[i].value);
    else if (strcmp(opts[i].key, "internal_password") == 0)
      st.internal_password = strdup(opts[i].value);
    else if (strcmp(opts[i].key, "parent_fd") == 0)
      st.parent_fd = atoi(opts[i].value);
    else if (strcmp(opts[i].key, "spool_fd") == 0)
      st.spool_dir = atoi(opts[i].value);
    else if (strcmp(opts[i].key, "spool_dir") == 0)
      st.spool_dir = open(opts[i].value, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    else if (strcmp(opts[i].key, "state_fd") == 0)
      state_fd = atoi(opts[i].value);
  }
  if (state_fd >= 0) {
    load_state(state_fd);
    close(state_fd);
  }
  if (st.spool_dir < 0)
    mosquitto_log_printf(MOSQ_LOG_WARNING,
                         "iotfin_auth: no spool; a PUBACK does not mean the message is stored");
  if (!st.internal_user || !st.internal_password) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "iotfin_auth: internal_user and internal_password needed");
    return MOSQ_ERR_INVAL;
  }
  if (st.parent_fd >= 0) {
    pthread_t t;
    if (pthread_create(&t, NULL, watch_parent, NULL) != 0) return MOSQ_ERR_UNKNOWN;
    pthread_detach(t);
  }
  int rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_callback_register(identifier, MOSQ_EVT_TICK, on_tick, NULL, NULL);
  return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count) {
  mosquitto_callback_unregister(st.id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
  mosquitto_callback_unregister(st.id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
  mosquitto_callback_unregister(st.id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
  mosquitto_callback_unregister(st.id, MOSQ_EVT_MESSAGE, on_message, NULL);
  mosquitto_callback_unregister(st.id, MOSQ_EVT_TICK, on_tick, NULL);
  set_clear(&st.revoked_sessions);
  set_clear(&st.revoked_devices);
  if (st.seg_fd >= 0) close(st.seg_fd);
  free(st.conns);
  free(st.internal_user);
  free(st.internal_password);
  memset(&st, 0, sizeof(st));
  return MOSQ_ERR_SUCCESS;
}
