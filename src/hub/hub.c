/* The device hub. See hub.h for the threads; each lane has its own bounded queue
 * (guarded by the lane's lock), the transit table of commands handed to the broker
 * is guarded by hub->lock. Whether a device listens to its commands is in the
 * database (devices.subscribed), shared with other instances. A lane whose store
 * write fails for want of storage keeps the work and retries it, in order. */
#include "hub/hub.h"

#include <mqtt_protocol.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/jsontext.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "hub/mqtt.h"
#include "hub/payloads.h"
#include "hub/spool.h"
#include "partners/partners.h"
#include "services/devices.h"
#include "services/events.h"

#define NLANES 4
#define NREQUEST_THREADS 8
#define MAX_PAYLOAD (16 * 1024)
#define TRANSIT_SLOTS 4096
#define REQUEST_DEADLINE_MS 2500
#define REQUEST_PROMISE_MS 3000
/* Per lane: past this, the network thread waits for room (the broker holds the
 * rest) rather than drop what it received. */
#define LANE_MAX 20000
/* And past this many payload bytes: 20,000 messages of 15 KiB would be 300 MB. */
#define LANE_MAX_BYTES (8u * 1024u * 1024u)
/* Malformed messages: at most one device.message.rejected event and log line per
 * slot (devices hash to slots) per second; the rest are counted into the next one. */
#define REJECT_SLOTS 1024
#define RETRY_MS 200
#define FLUSH_SET 32

typedef enum {
  W_EVENT,
  W_ACK,
  W_PRESENCE,
  W_FLUSH,
  W_DELIVERED,
  W_UNDELIVERED,
  W_OFFLINE,
  W_REQUEST,
  W_REJECT
} work_kind_t;

typedef struct work {
  work_kind_t kind;
  char device[64];
  char arg[160]; /* command id, request name, or rejection reason */
  char topic[256];
  int64_t arrived_ms; /* unix ms the broker got it; a request's 3 s promise runs from here */
  char *payload;
  size_t len;
  struct work *next;
} work_t;

typedef struct {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_cond_t room; /* signalled when len drops below LANE_MAX */
  work_t *head, *tail;
  int len;
  size_t bytes; /* payload bytes queued */
  /* Devices with a command flush queued here and not yet begun: a command posted
   * meanwhile needs no flush of its own, since that one reads it too (it reads
   * after this command's commit). Full, a flush is queued as before. */
  char flushing[FLUSH_SET][64];
  int nflushing;
} lane_t;

typedef struct {
  int64_t second;  /* unix second of the last recorded rejection */
  long suppressed; /* rejections since, counted but not recorded */
} reject_slot_t;

typedef struct {
  int mid;
  char device[64], cid[40];
} transit_t;

struct hub {
  app_t *app;
  hub_mqtt_t *mqtt;
  lane_t lanes[NLANES];
  lane_t requests; /* one queue shared by the request threads */
  pthread_t request_threads[NREQUEST_THREADS];
  pthread_t timer;
  bool timer_started;
  atomic_bool stopping;
  atomic_bool closing; /* hub_stop began: nothing waits for room or storage any more */
  /* Whether this instance takes in the devices' ordered messages (events, acks,
   * presence): always with the managed broker; with a shared one, the instance
   * that holds the "ingest" leadership (see take_over). Requests go to any. */
  bool managed;
  atomic_bool leading;
  int64_t last_sweep_ms; /* hub-timer only: the external spool's last sweep */
  pthread_mutex_t lock;
  transit_t transit[TRANSIT_SLOTS]; /* mid == 0: free */
  /* reject_lock guards rejects. */
  pthread_mutex_t reject_lock;
  reject_slot_t rejects[REJECT_SLOTS];
};

static unsigned hash(const char *s) {
  unsigned h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static void count(const char *name, const char *labels) { metrics_counter_add(name, labels, 1); }

/* --- queues ------------------------------------------------------------------ */

/* Appends w. wait: a device message, which waits for room rather than be dropped;
 * other work (flushes, broker answers) always goes in. */
static void push_wait(hub_t *hub, lane_t *l, work_t *w, bool wait) {
  pthread_mutex_lock(&l->lock);
  while (wait && (l->len >= LANE_MAX || l->bytes >= LANE_MAX_BYTES) &&
         !atomic_load(&hub->closing)) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&l->room, &l->lock, &ts);
  }
  l->len++;
  l->bytes += w->len;
  if (l->tail)
    l->tail->next = w;
  else
    l->head = w;
  l->tail = w;
  pthread_cond_signal(&l->cond);
  pthread_mutex_unlock(&l->lock);
}

/* Caller must hold l->lock; w was just unlinked from l. */
static void lane_took(lane_t *l, work_t *w) {
  bool was_full = l->len >= LANE_MAX || l->bytes >= LANE_MAX_BYTES;
  l->len--;
  l->bytes -= w->len;
  if (was_full && l->len < LANE_MAX && l->bytes < LANE_MAX_BYTES) pthread_cond_broadcast(&l->room);
}

static work_t *pop(hub_t *hub, lane_t *l) {
  pthread_mutex_lock(&l->lock);
  while (!l->head && !atomic_load(&hub->stopping)) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&l->cond, &l->lock, &ts);
  }
  work_t *w = l->head;
  if (w) {
    l->head = w->next;
    if (!l->head) l->tail = NULL;
    lane_took(l, w);
  }
  pthread_mutex_unlock(&l->lock);
  return w;
}

static void push(lane_t *l, work_t *w) { push_wait(NULL, l, w, false); }

static void work_free(work_t *w) {
  free(w->payload);
  free(w);
}

static work_t *work_new(work_kind_t kind, const char *device, const char *arg, const char *topic,
                        const void *payload, size_t len) {
  work_t *w = calloc(1, sizeof(*w));
  if (!w) return NULL;
  w->kind = kind;
  w->arrived_ms = time_now_ms();
  snprintf(w->device, sizeof(w->device), "%s", device);
  snprintf(w->arg, sizeof(w->arg), "%s", arg ? arg : "");
  snprintf(w->topic, sizeof(w->topic), "%s", topic ? topic : "");
  if (payload && len) {
    w->payload = malloc(len + 1);
    if (!w->payload) {
      free(w);
      return NULL;
    }
    memcpy(w->payload, payload, len);
    w->payload[len] = 0;
    w->len = len;
  }
  return w;
}

static lane_t *lane_of(hub_t *hub, const char *device) {
  return &hub->lanes[hash(device) % NLANES];
}

/* Sleeps RETRY_MS in slices; false once the hub is closing. */
static bool retry_pause(hub_t *hub) {
  for (int t = 0; t < RETRY_MS && !atomic_load(&hub->closing); t += 20)
    usleep(20 * 1000);
  return !atomic_load(&hub->closing);
}

/* --- transit table (hub->lock) ---------------------------------------------- */

/* Caller must hold hub->lock. */
static bool in_transit(hub_t *hub, const char *cid) {
  for (int i = 0; i < TRANSIT_SLOTS; i++)
    if (hub->transit[i].mid && strcmp(hub->transit[i].cid, cid) == 0) return true;
  return false;
}

/* Sends every queued command of a listening device, oldest first. Whether it
 * listens is in the database: another instance may have heard it subscribe. */
static void flush_commands(hub_t *hub, const char *device) {
  json_t *cmds = NULL;
  if (devices_commands_pending(hub->app, device, &cmds) < 0) return;
  char topic[128];
  snprintf(topic, sizeof(topic), "devices/%s/commands", device);
  size_t i;
  json_t *c;
  json_array_foreach(cmds, i, c) {
    const char *cid = json_string_value(json_object_get(c, "id"));
    char *payload = json_text(c, NULL);
    /* The lock spans the publish so that the broker's acknowledgement, which may
     * arrive on the network thread at once, finds the entry. */
    pthread_mutex_lock(&hub->lock);
    if (!in_transit(hub, cid)) {
      int mid = 0;
      if (hub_mqtt_publish(hub->mqtt, topic, payload, strlen(payload), 1, &mid) == 0 && mid) {
        transit_t *t = &hub->transit[(unsigned)mid % TRANSIT_SLOTS];
        t->mid = mid;
        snprintf(t->device, sizeof(t->device), "%s", device);
        snprintf(t->cid, sizeof(t->cid), "%s", cid);
        count("iotfin_mqtt_messages_out_total", "kind=\"command\"");
      }
    }
    pthread_mutex_unlock(&hub->lock);
    free(payload);
  }
  json_decref(cmds);
}

/* --- handling one device message ---------------------------------------------- */

typedef struct {
  const char *device, *topic, *reason, *subject;
  long count;
} rej_t;

static int reject_tx(store_tx_t *tx, void *arg) {
  rej_t *r = arg;
  return events_record(tx, "device.message.rejected", r->subject,
                       json_pack("{s:s,s:s,s:s,s:I}", "device_id", r->device, "topic", r->topic,
                                 "reason", r->reason, "count", (json_int_t)r->count),
                       NULL);
}

/* Every rejection is counted in /metrics; a flood from one device writes at most one
 * event and one log line a second, whose count says how many rejections it stands
 * for (this one and those suppressed since the last record). */
static void record_rejection(hub_t *hub, const char *device, const char *topic,
                             const char *reason) {
  char labels[128];
  snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
  count("iotfin_mqtt_messages_rejected_total", labels);
  int64_t now_s = time_now_ms() / 1000;
  long n = 0;
  pthread_mutex_lock(&hub->reject_lock);
  reject_slot_t *slot = &hub->rejects[hash(device) % REJECT_SLOTS];
  if (slot->second == now_s) {
    slot->suppressed++;
  } else {
    n = slot->suppressed + 1;
    slot->second = now_s;
    slot->suppressed = 0;
  }
  pthread_mutex_unlock(&hub->reject_lock);
  if (!n) return;
  if (n > 1)
    log_warn("hub",
             "dropped a message from device %s on %s: %s (and %ld more since the last "
             "report)",
             device, topic, reason, n - 1);
  else
    log_warn("hub", "dropped a message from device %s on %s: %s", device, topic, reason);
  char subject[80];
  snprintf(subject, sizeof(subject), "devices/%s", device);
  char status[16], ext[128];
  if (devices_status(hub->app, device, status, ext) < 0) return;
  rej_t r = {device, topic, reason, subject, n};
  store_write(hub->app->store, reject_tx, &r);
}

/* Parses a device event; NULL (after recording the rejection) when malformed. */
static json_t *parse_event(hub_t *hub, work_t *w) {
  const char *why = NULL;
  json_t *e = hub_event_parse(w->payload, w->len, &why);
  if (!e) {
    record_rejection(hub, w->device, w->topic, why);
    return NULL;
  }
  count("iotfin_mqtt_messages_in_total", "kind=\"event\"");
  return e;
}

#define EVENT_BATCH 128

/* Stores w's event and the events queued right behind it on the lane in one
 * transaction: under load a lane then pays one commit for many events. The lane
 * is FIFO and a device always uses one lane, so per-device order is kept. While
 * storage fails the batch is kept and retried, holding the lane (and so the
 * order) until it is stored. */
static void handle_events(hub_t *hub, lane_t *l, work_t *w) {
  work_t *batch[EVENT_BATCH];
  int n = 0;
  batch[n++] = w;
  pthread_mutex_lock(&l->lock);
  while (n < EVENT_BATCH && l->head && l->head->kind == W_EVENT) {
    batch[n++] = l->head;
    l->head = l->head->next;
    if (!l->head) l->tail = NULL;
    lane_took(l, batch[n - 1]);
  }
  pthread_mutex_unlock(&l->lock);
  const char *ids[EVENT_BATCH];
  json_t *events[EVENT_BATCH];
  int m = 0;
  for (int i = 0; i < n; i++) {
    json_t *e = parse_event(hub, batch[i]);
    if (!e) continue;
    ids[m] = batch[i]->device;
    events[m++] = e;
  }
  int rc = 0;
  while (m && (rc = devices_events_store_many(hub->app, ids, events, m)) == -ERR_UNAVAILABLE &&
         retry_pause(hub)) {
  }
  if (rc == -ERR_UNAVAILABLE) {
    log_error("hub", "stopping with %d device event(s) not stored: storage unavailable", m);
  } else if (rc < 0) {
    /* Not the disk: one bad event must not take the others with it. */
    for (int i = 0; i < m; i++)
      if (devices_events_store_many(hub->app, &ids[i], &events[i], 1) < 0)
        log_error("hub", "could not store event of device %s", ids[i]);
  }
  for (int i = 0; i < m; i++)
    json_decref(events[i]);
  for (int i = 1; i < n; i++)
    work_free(batch[i]); /* batch[0] is freed by the caller */
}

/* The handlers below answer -ERR_UNAVAILABLE when storage refused their write: the
 * lane then retries the same work later, keeping the device's order. */
static int handle_ack(hub_t *hub, work_t *w) {
  const char *status, *why;
  json_t *result;
  json_t *a = hub_ack_parse(w->payload, w->len, &status, &result, &why);
  if (!a) {
    record_rejection(hub, w->device, w->topic, why);
    return 0;
  }
  int rc = devices_command_ack(hub->app, w->device, w->arg, status, result);
  if (rc != -ERR_UNAVAILABLE) count("iotfin_mqtt_messages_in_total", "kind=\"ack\"");
  if (rc == -ERR_NOT_FOUND)
    record_rejection(hub, w->device, w->topic, "unknown command");
  else if (rc == -ERR_CONFLICT)
    log_info("hub", "late ack for command %s of %s ignored (already final)", w->arg, w->device);
  json_decref(a);
  return rc == -ERR_UNAVAILABLE ? rc : 0;
}

static int handle_presence(hub_t *hub, work_t *w) {
  hub_presence_t what = hub_presence_parse(w->payload, w->len);
  int rc = 0;
  if (what == HUB_PRESENCE_ONLINE || what == HUB_PRESENCE_OFFLINE) {
    rc = devices_presence(hub->app, w->device, what == HUB_PRESENCE_ONLINE);
  } else if (what == HUB_PRESENCE_SUBSCRIBED) {
    rc = devices_subscribed(hub->app, w->device, true);
    if (rc >= 0) flush_commands(hub, w->device);
  }
  return rc == -ERR_UNAVAILABLE ? rc : 0;
}

static int handle_delivered(hub_t *hub, work_t *w) {
  int rc = devices_command_delivered(hub->app, w->device, w->arg);
  return rc == -ERR_UNAVAILABLE ? rc : 0;
}

/* The broker took a command but had nobody to give it to (or refused it): the
 * device is not listening after all. The command stays queued and goes out again
 * when the plugin next reports the device subscribed. */
static int handle_undelivered(hub_t *hub, work_t *w) {
  /* Said once per device, not once per command of a long queue. */
  int rc = devices_subscribed(hub->app, w->device, false);
  if (rc > 0)
    log_info("hub", "command %s not delivered to %s: %s; its commands stay queued", w->arg,
             w->device, w->topic);
  return rc == -ERR_UNAVAILABLE ? rc : 0;
}

static int offline_lane_tx(store_tx_t *tx, void *arg);
static int all_offline_tx(store_tx_t *tx, void *arg);

/* iotfin lost the broker: the devices of this lane that were online are not any
 * more, as far as anyone can tell. Run on the lane, after what came before. */
static int handle_offline(hub_t *hub, lane_t *l) {
  void *a[2] = {hub, l};
  int rc = store_write(hub->app->store, offline_lane_tx, a);
  if (rc > 0) log_info("hub", "%d device(s) marked offline: the broker connection was lost", rc);
  return rc == -ERR_UNAVAILABLE ? rc : 0;
}

static void handle_request(hub_t *hub, work_t *w);

static int handle(hub_t *hub, lane_t *l, work_t *w) {
  switch (w->kind) {
  case W_EVENT:
    handle_events(hub, l, w);
    return 0;
  case W_ACK:
    return handle_ack(hub, w);
  case W_PRESENCE:
    return handle_presence(hub, w);
  case W_FLUSH:
    /* Out of the set before the read: a command committed from now on queues a
     * flush of its own. */
    pthread_mutex_lock(&l->lock);
    for (int i = 0; i < l->nflushing; i++)
      if (strcmp(l->flushing[i], w->device) == 0) {
        memcpy(l->flushing[i], l->flushing[--l->nflushing], sizeof(l->flushing[i]));
        break;
      }
    pthread_mutex_unlock(&l->lock);
    flush_commands(hub, w->device);
    return 0;
  case W_DELIVERED:
    return handle_delivered(hub, w);
  case W_UNDELIVERED:
    return handle_undelivered(hub, w);
  case W_OFFLINE:
    return handle_offline(hub, l);
  case W_REJECT:
    record_rejection(hub, w->device, w->topic, w->arg);
    return 0;
  case W_REQUEST:
    handle_request(hub, w);
    return 0;
  }
  return 0;
}

static void *lane_main(void *arg) {
  hub_t *hub = ((void **)arg)[0];
  lane_t *l = ((void **)arg)[1];
  free(arg);
  pthread_setname_np(pthread_self(), "hub-lane");
  work_t *w;
  while ((w = pop(hub, l)) || !atomic_load(&hub->stopping)) {
    if (!w) continue;
    while (handle(hub, l, w) == -ERR_UNAVAILABLE) {
      if (!retry_pause(hub)) {
        log_error("hub", "stopping with a device message of %s not stored: storage unavailable",
                  w->device);
        break;
      }
    }
    work_free(w);
  }
  return NULL;
}

/* --- requests ----------------------------------------------------------------- */

static void respond(hub_t *hub, const char *device, const char *request_id, json_t *body) {
  char topic[300];
  snprintf(topic, sizeof(topic), "devices/%s/responses/%s", device, request_id);
  char *s = json_text(body, NULL);
  json_decref(body);
  if (!s) return;
  hub_mqtt_publish(hub->mqtt, topic, s, strlen(s), 1, NULL);
  count("iotfin_mqtt_messages_out_total", "kind=\"response\"");
  free(s);
}

static void handle_request(hub_t *hub, work_t *w) {
  const char *rid;
  json_t *data;
  json_t *r = hub_request_parse(w->payload, w->len, &rid, &data);
  if (!r) {
    work_t *rej = work_new(W_REJECT, w->device, "request needs request_id and data (object)",
                           w->topic, NULL, 0);
    if (rej) push(lane_of(hub, w->device), rej);
    return;
  }
  count("iotfin_mqtt_messages_in_total", "kind=\"request\"");
  const char *name = w->arg;
  int64_t age = time_now_ms() - w->arrived_ms;
  if (age < 0) age = 0; /* the plugin's clock may run a little ahead of ours */
  if (age >= REQUEST_PROMISE_MS) {
    /* The device was promised an answer within 3 s; past that, acting on the
     * request (an authorization, say) would surprise it more than a refusal. */
    count("iotfin_mqtt_requests_timed_out_total", "");
    respond(hub, w->device, rid,
            json_pack("{s:s,s:s,s:{s:s,s:s}}", "request_id", rid, "status", "error", "error",
                      "code", "timeout", "message",
                      "the request waited longer than 3 s and was not acted on"));
  } else if (strcmp(name, "ping") == 0) {
    char ts[32];
    time_format_rfc3339(time_now_ms(), ts, sizeof(ts));
    respond(hub, w->device, rid,
            json_pack("{s:s,s:s,s:{s:s}}", "request_id", rid, "status", "ok", "data", "time", ts));
  } else if (strcmp(name, "authorize") == 0) {
    char status[16], ext[128];
    json_t *out;
    if (devices_status(hub->app, w->device, status, ext) < 0 || strcmp(status, "active") != 0) {
      out = json_pack("{s:s,s:s,s:{s:s,s:s}}", "request_id", rid, "status", "error", "error",
                      "code", "device_not_active", "message", "the device is not active");
    } else {
      /* The device was promised an answer within 3 s of sending: what is left of
       * the BANK's 2.5 s share after waiting in the queue is its deadline. */
      long left = (long)(REQUEST_DEADLINE_MS - (time_now_ms() - w->arrived_ms));
      json_t *body = json_pack("{s:s,s:s,s:O}", "device_id", ext, "request_id", rid, "data", data);
      partner_result_t res;
      if (left >= 50) {
        partner_call(hub->app, PARTNER_BANK, "POST", "/authorizations", body, NULL, left, &res);
      } else {
        memset(&res, 0, sizeof(res));
        res.verdict = PARTNER_TRANSIENT;
        snprintf(res.error, sizeof(res.error),
                 "too little of the 3 s left to ask the bank (the request waited %lld ms)",
                 (long long)(time_now_ms() - w->arrived_ms));
      }
      json_decref(body);
      if (res.verdict == PARTNER_OK && res.body)
        out = json_pack("{s:s,s:s,s:O}", "request_id", rid, "status", "ok", "data", res.body);
      else
        out = json_pack("{s:s,s:s,s:{s:s,s:s}}", "request_id", rid, "status", "error", "error",
                        "code", "upstream_unavailable", "message",
                        res.error[0] ? res.error : "the bank did not answer");
      partner_result_free(&res);
    }
    respond(hub, w->device, rid, out);
  } else {
    respond(hub, w->device, rid,
            json_pack("{s:s,s:s,s:{s:s,s:s}}", "request_id", rid, "status", "error", "error",
                      "code", "unknown_request", "message", "no such request name"));
  }
  json_decref(r);
}

static void *request_main(void *arg) {
  hub_t *hub = arg;
  pthread_setname_np(pthread_self(), "hub-request");
  work_t *w;
  while ((w = pop(hub, &hub->requests)) || !atomic_load(&hub->stopping)) {
    if (!w) continue;
    handle_request(hub, w);
    work_free(w);
  }
  return NULL;
}

/* --- the network thread's callbacks --------------------------------------------- */

/* Splits devices/<id>/<rest>; false when the topic is not a device topic. */
static bool split_device_topic(const char *topic, char device[64], const char **rest) {
  if (strncmp(topic, "devices/", 8) != 0) return false;
  const char *id = topic + 8, *slash = strchr(id, '/');
  if (!slash || slash == id || (size_t)(slash - id) >= 64) return false;
  memcpy(device, id, (size_t)(slash - id));
  device[slash - id] = 0;
  *rest = slash + 1;
  return true;
}

/* Device messages wait for room on a full lane rather than be dropped. */
static void push_device(hub_t *hub, const char *device, work_t *w) {
  push_wait(hub, lane_of(hub, device), w, true);
}

static void on_message(void *arg, const char *topic, const void *payload, size_t len,
                       int64_t arrived_ms) {
  hub_t *hub = arg;
  char device[64];
  const char *rest;
  if (strncmp(topic, "iotfin/presence/", 16) == 0) {
    snprintf(device, sizeof(device), "%s", topic + 16);
    work_t *w = work_new(W_PRESENCE, device, NULL, topic, payload, len);
    if (w) push_device(hub, device, w);
    return;
  }
  if (!split_device_topic(topic, device, &rest)) return;
  if (len > MAX_PAYLOAD) {
    work_t *w = work_new(W_REJECT, device, "payload over 16 KiB", topic, NULL, 0);
    if (w) push_device(hub, device, w);
    return;
  }
  work_t *w = NULL;
  if (strcmp(rest, "events") == 0) {
    w = work_new(W_EVENT, device, NULL, topic, payload, len);
  } else if (strncmp(rest, "commands/", 9) == 0) {
    const char *cid = rest + 9, *ack = strchr(cid, '/');
    if (ack && strcmp(ack, "/ack") == 0 && ack - cid < 40) {
      char c[40];
      snprintf(c, sizeof(c), "%.*s", (int)(ack - cid), cid);
      w = work_new(W_ACK, device, c, topic, payload, len);
    }
  } else if (strncmp(rest, "requests/", 9) == 0 && hub_topic_level_safe(rest + 9)) {
    /* Only authorize waits on a partner; everything else is answered on the lane
     * at once, never queued behind slow BANK calls. */
    w = work_new(W_REQUEST, device, rest + 9, topic, payload, len);
    if (w) w->arrived_ms = arrived_ms;
    if (w && strcmp(rest + 9, "authorize") == 0) {
      push_wait(hub, &hub->requests, w, true);
      return;
    }
  }
  if (!w) w = work_new(W_REJECT, device, "unknown topic", topic, NULL, 0);
  if (w) push_device(hub, device, w);
}

/* The broker's PUBACK for a command. Reason 0 means a subscriber took it: the
 * device, connected and listening. 0x10 (no matching subscribers) or a refusal
 * means it reached nobody. */
static void on_published(void *arg, int mid, int reason) {
  hub_t *hub = arg;
  pthread_mutex_lock(&hub->lock);
  transit_t *t = &hub->transit[(unsigned)mid % TRANSIT_SLOTS];
  work_t *w = NULL;
  if (t->mid == mid) {
    if (reason == 0) {
      w = work_new(W_DELIVERED, t->device, t->cid, NULL, NULL, 0);
    } else {
      char why[64];
      snprintf(why, sizeof(why), "%s (0x%02x)",
               reason == MQTT_RC_NO_MATCHING_SUBSCRIBERS ? "no subscriber" : "broker refused",
               reason);
      w = work_new(W_UNDELIVERED, t->device, t->cid, why, NULL, 0);
    }
    t->mid = 0;
  }
  pthread_mutex_unlock(&hub->lock);
  if (w) push(lane_of(hub, w->device), w);
}

/* iotfin's client lost the broker: whatever it believed about devices is void.
 * Nobody listens, nothing is in transit, and each lane marks its online devices
 * offline after the messages it already holds. Network thread. */
static void on_lost(void *arg) {
  hub_t *hub = arg;
  pthread_mutex_lock(&hub->lock);
  memset(hub->transit, 0, sizeof(hub->transit));
  pthread_mutex_unlock(&hub->lock);
  if (!atomic_load(&hub->leading)) return; /* presence is the leader's to keep */
  for (int i = 0; i < NLANES; i++) {
    work_t *w = work_new(W_OFFLINE, "", NULL, NULL, NULL, 0);
    if (w) push(&hub->lanes[i], w);
  }
}

static void send_control(hub_t *hub, const char *what, json_t *body) {
  char topic[64];
  snprintf(topic, sizeof(topic), "iotfin/control/%s", what);
  char *s = json_text(body, NULL);
  json_decref(body);
  if (s) hub_mqtt_publish(hub->mqtt, topic, s, strlen(s), 1, NULL);
  free(s);
}

/* The ordered streams: only the leading instance subscribes, so each device's
 * messages are stored in the order the broker took them. Shared subscriptions all
 * the same: during a hand-over two leaders may overlap for a moment, and then each
 * message still goes to one of them. */
static const char *const ordered_topics[] = {"$share/iotfin/devices/+/events",
                                             "$share/iotfin/devices/+/commands/+/ack",
                                             "$share/iotfin/iotfin/presence/+"};

static void subscribe_ordered(hub_t *hub) {
  for (size_t i = 0; i < sizeof(ordered_topics) / sizeof(ordered_topics[0]); i++)
    hub_mqtt_subscribe(hub->mqtt, ordered_topics[i], 1);
  json_t *rev = NULL;
  /* The plugin's revocations, replaced whole; it also says again which devices are
   * connected and subscribed, so presence is current from here on. */
  if (devices_revoked_sessions(hub->app, &rev) == 0)
    send_control(hub, "reset",
                 json_pack("{s:O,s:O}", "sessions", json_object_get(rev, "session_ids"), "devices",
                           json_object_get(rev, "device_ids")));
  json_decref(rev);
}

static void on_connect(void *arg) {
  hub_t *hub = arg;
  /* Requests are answered by whichever instance the broker hands one to. */
  hub_mqtt_subscribe(hub->mqtt, "$share/iotfin/devices/+/requests/+", 1);
  hub_keys_changed(hub);
  if (atomic_load(&hub->leading)) subscribe_ordered(hub);
  /* Whatever was in transit to a broker we lost is sent again by the next flush. */
  pthread_mutex_lock(&hub->lock);
  memset(hub->transit, 0, sizeof(hub->transit));
  pthread_mutex_unlock(&hub->lock);
}

/* This instance becomes the one that takes in device messages from a shared broker.
 * The plugin admits devices only while some instance subscribes to their events,
 * so none was acknowledged since the last leader went; what that one had taken but
 * maybe not stored is in the broker's spool: store it first, then subscribe, so each
 * device's messages stay in order. Presence starts over: every device offline until
 * the plugin, on the reset, says again who is connected. */
static void take_over(hub_t *hub) {
  const char *spool = hub->app->cfg->broker_spool;
  if (spool[0]) {
    int n;
    while ((n = hub_spool_apply(hub->app, spool, HUB_SPOOL_CATCH_UP)) < 0) {
      log_warn("hub", "cannot store the broker's spool in %s yet; retrying", spool);
      if (!retry_pause(hub)) return;
    }
    if (n > 0) log_info("hub", "%d device message(s) from the broker's spool checked in", n);
  }
  int n = store_write(hub->app->store, all_offline_tx, NULL);
  if (n > 0) log_info("hub", "%d device(s) offline until the broker says again", n);
  atomic_store(&hub->leading, true);
  log_info("hub", "this instance now takes in device messages");
  if (hub_mqtt_connected(hub->mqtt)) subscribe_ordered(hub);
}

/* Hub-timer: follows the "ingest" leadership, and while leading sweeps the external
 * broker's closed spool segments every second (each is deleted once stored). */
static void lead_tick(hub_t *hub) {
  if (hub->managed) return;
  bool lead = store_leader(hub->app->store, "ingest") == 1;
  if (lead && !atomic_load(&hub->leading)) {
    take_over(hub);
  } else if (!lead && atomic_load(&hub->leading)) {
    /* Another instance leads now (this one lost the database for a while): leave
     * the ordered streams to it. Reconnecting drops the subscriptions at once. */
    atomic_store(&hub->leading, false);
    log_warn("hub", "no longer taking in device messages (another instance does)");
    hub_mqtt_reconnect(hub->mqtt);
  }
  const char *spool = hub->app->cfg->broker_spool;
  int64_t now = time_mono_ms();
  if (lead && spool[0] && now - hub->last_sweep_ms >= 1000) {
    hub->last_sweep_ms = now;
    int n = hub_spool_apply(hub->app, spool, HUB_SPOOL_CLOSED);
    if (n < 0) log_warn("hub", "cannot store the broker's spool in %s yet", spool);
  }
}

/* --- public ------------------------------------------------------------------ */

void hub_keys_changed(hub_t *hub) {
  if (hub) send_control(hub, "keys", auth_keys_jwks(hub->app->keys));
}

void hub_command_queued(hub_t *hub, const char *device_id) {
  if (!hub) return;
  lane_t *l = lane_of(hub, device_id);
  work_t *w = work_new(W_FLUSH, device_id, NULL, NULL, NULL, 0);
  if (!w) return;
  pthread_mutex_lock(&l->lock);
  for (int i = 0; i < l->nflushing; i++)
    if (strcmp(l->flushing[i], w->device) == 0) {
      /* A flush of this device is queued and will read this command too. */
      pthread_mutex_unlock(&l->lock);
      work_free(w);
      return;
    }
  if (l->nflushing < FLUSH_SET) memcpy(l->flushing[l->nflushing++], w->device, sizeof(w->device));
  pthread_mutex_unlock(&l->lock);
  push(l, w);
}

void hub_device_revoked(hub_t *hub, const char *device_id, const char *sid) {
  if (!hub) return;
  if (sid)
    send_control(hub, "revoke", json_pack("{s:[s],s:[s]}", "sessions", sid, "kick", device_id));
  else
    send_control(hub, "revoke", json_pack("{s:[s]}", "devices", device_id));
}

static void *timer_main(void *arg) {
  hub_t *hub = arg;
  pthread_setname_np(pthread_self(), "hub-timer");
  lead_tick(hub); /* at once: an instance that may lead should not keep devices waiting */
  while (!atomic_load(&hub->stopping)) {
    /* 200 ms between sweeps, in slices: a stop must not wait out a whole sleep. */
    for (int i = 0; i < 10 && !atomic_load(&hub->stopping); i++)
      usleep(20 * 1000);
    if (atomic_load(&hub->stopping)) break;
    lead_tick(hub);
    int n = devices_commands_expire(hub->app);
    if (n > 0) log_info("hub", "%d command(s) expired unacknowledged", n);
  }
  return NULL;
}

static int online_tx(store_tx_t *tx, void *arg) {
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT COUNT(*) FROM devices WHERE online = 1", "");
  if (n > 0) *(int64_t *)arg = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  return n < 0 ? n : 0;
}

static void collect(void *arg) {
  hub_t *hub = arg;
  int64_t online = 0;
  if (store_read(hub->app->store, online_tx, &online) == 0)
    metrics_gauge_set("iotfin_devices_online", "", (double)online);
}

/* Marks offline, with device.disconnected each, the online devices of one lane. */
static int offline_lane_tx(store_tx_t *tx, void *arg) {
  hub_t *hub = ((void **)arg)[0];
  lane_t *l = ((void **)arg)[1];
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT id FROM devices WHERE online = 1", "");
  int rc = n < 0 ? n : 0, marked = 0;
  for (int i = 0; i < n && rc >= 0; i++) {
    const char *id = store_rows_text(rows, i, 0);
    if (lane_of(hub, id) != l) continue;
    rc = store_exec(tx, NULL,
                    "UPDATE devices SET online = 0, subscribed = 0 WHERE id = ? AND online = 1",
                    "s", id);
    if (rc <= 0) continue;
    char subject[80];
    snprintf(subject, sizeof(subject), "devices/%s", id);
    rc = events_record(tx, "device.disconnected", subject, json_pack("{s:s}", "device_id", id),
                       NULL);
    marked++;
  }
  store_rows_free(&rows);
  return rc < 0 ? rc : marked;
}

static int all_offline_tx(store_tx_t *tx, void *arg) {
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT id FROM devices WHERE online = 1", "");
  if (n <= 0) return n;
  int rc =
      store_exec(tx, NULL, "UPDATE devices SET online = 0, subscribed = 0 WHERE online = 1", "");
  for (int i = 0; i < n && rc >= 0; i++) {
    char subject[80];
    snprintf(subject, sizeof(subject), "devices/%s", store_rows_text(rows, i, 0));
    rc = events_record(tx, "device.disconnected", subject,
                       json_pack("{s:s}", "device_id", store_rows_text(rows, i, 0)), NULL);
  }
  store_rows_free(&rows);
  return rc < 0 ? rc : n;
}

int hub_start(app_t *app, const char *host, int port, const char *user, const char *pass,
              bool managed, hub_t **out) {
  *out = NULL;
  hub_t *hub = calloc(1, sizeof(*hub));
  if (!hub) return -ERR_INTERNAL;
  hub->app = app;
  pthread_mutex_init(&hub->lock, NULL);
  pthread_mutex_init(&hub->reject_lock, NULL);
  metrics_describe("iotfin_mqtt_messages_in_total", "counter",
                   "Device messages taken in, by kind.");
  metrics_describe("iotfin_mqtt_messages_out_total", "counter",
                   "Messages sent to devices, by kind.");
  metrics_describe("iotfin_mqtt_messages_rejected_total", "counter",
                   "Malformed device messages dropped, by reason.");
  metrics_describe("iotfin_devices_online", "gauge", "Devices connected right now.");
  metrics_describe("iotfin_mqtt_requests_timed_out_total", "counter",
                   "Device requests answered timeout: older than 3 s when their turn came.");
  metrics_add_collector(collect, hub);
  hub->managed = managed;
  atomic_store(&hub->leading, managed);
  if (managed) {
    /* A fresh managed broker has no device connected, whatever the store says. */
    int n = store_write(app->store, all_offline_tx, NULL);
    if (n > 0) log_info("hub", "%d device(s) marked offline: the broker restarted", n);
  }
  for (int i = 0; i < NLANES; i++) {
    pthread_mutex_init(&hub->lanes[i].lock, NULL);
    pthread_cond_init(&hub->lanes[i].cond, NULL);
    pthread_cond_init(&hub->lanes[i].room, NULL);
    void **a = malloc(2 * sizeof(void *));
    a[0] = hub;
    a[1] = &hub->lanes[i];
    pthread_create(&hub->lanes[i].thread, NULL, lane_main, a);
  }
  pthread_mutex_init(&hub->requests.lock, NULL);
  pthread_cond_init(&hub->requests.cond, NULL);
  for (int i = 0; i < NREQUEST_THREADS; i++)
    pthread_create(&hub->request_threads[i], NULL, request_main, hub);
  hub_mqtt_handlers_t h = {
      .on_connect = on_connect,
      .on_message = on_message,
      .on_published = on_published,
      .on_lost = on_lost,
      .arg = hub,
  };
  int rc = hub_mqtt_start(host, port, user, pass, 5000, &h, &hub->mqtt);
  if (rc < 0) {
    hub_stop(&hub);
    return rc;
  }
  app->mqtt = hub->mqtt;
  /* After the client exists: the timer publishes through it. */
  hub->timer_started = pthread_create(&hub->timer, NULL, timer_main, hub) == 0;
  *out = hub;
  return 0;
}

void hub_stop(hub_t **phub) {
  hub_t *hub = *phub;
  if (!hub) return;
  atomic_store(&hub->closing, true);
  for (int i = 0; i < NLANES; i++) { /* the network thread may wait for room */
    pthread_mutex_lock(&hub->lanes[i].lock);
    pthread_cond_broadcast(&hub->lanes[i].room);
    pthread_mutex_unlock(&hub->lanes[i].lock);
  }
  /* The lanes and the timer may still publish: the client is freed after them. */
  hub_mqtt_halt(hub->mqtt);
  atomic_store(&hub->stopping, true);
  for (int i = 0; i < NLANES; i++) {
    pthread_mutex_lock(&hub->lanes[i].lock);
    pthread_cond_broadcast(&hub->lanes[i].cond);
    pthread_mutex_unlock(&hub->lanes[i].lock);
    pthread_join(hub->lanes[i].thread, NULL);
  }
  pthread_mutex_lock(&hub->requests.lock);
  pthread_cond_broadcast(&hub->requests.cond);
  pthread_mutex_unlock(&hub->requests.lock);
  for (int i = 0; i < NREQUEST_THREADS; i++)
    pthread_join(hub->request_threads[i], NULL);
  if (hub->timer_started) pthread_join(hub->timer, NULL);
  hub->app->mqtt = NULL;
  hub_mqtt_stop(&hub->mqtt);
  free(hub);
  *phub = NULL;
}
