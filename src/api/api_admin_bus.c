/* Operations routes of the bus (CONTRACT section 8): queue depths, dead letters,
 * redrive, alarms and the event log. All need the admin token. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "app.h"
#include "bus/bus.h"
#include "core/errors.h"
#include "http/validate.h"
#include "services/events.h"

int api_admin_queues_list(http_req_t *req) {
  json_t *items;
  int rc = bus_queue_stats(http_req_app(req), &items);
  if (rc < 0) return rc;
  return http_reply_json(req, 200, json_pack("{s:o}", "items", items));
}

static int bad_cursor(http_req_t *req) {
  return http_reply_problem(
      req, ERR_VALIDATION_FAILED, "cursor is not one this API issued",
      json_pack("[{s:s,s:s}]", "field", "cursor", "message", "unknown cursor"));
}

int api_admin_queues_dead_letters(http_req_t *req) {
  const char *name = http_req_param(req, "name");
  if (!bus_queue_find(name)) return http_reply_problem(req, ERR_NOT_FOUND, "no such queue", NULL);
  int limit;
  const char *cursor;
  if (http_req_page(req, &limit, &cursor) < 0) return 0;
  int64_t after = http_validate_cursor(cursor);
  if (after < 0) return bad_cursor(req);
  json_t *items;
  int64_t next;
  int rc = bus_dead_letters(http_req_app(req), name, after, limit, &items, &next);
  if (rc < 0) return rc;
  char nc[32];
  snprintf(nc, sizeof(nc), "%lld", (long long)next);
  return http_reply_json(
      req, 200,
      json_pack("{s:o,s:o}", "items", items, "next_cursor", next ? json_string(nc) : json_null()));
}

static const http_field_t redrive_fields[] = {
    {.name = "ids",
     .type = HTTP_T_ARRAY,
     .min = 1,
     .max = 1000,
     .description = "Dead-letter ids to redrive; all of the queue's when left out."},
    {0},
};
const http_body_t api_admin_redrive_body = {redrive_fields, false, false};

int api_admin_queues_redrive(http_req_t *req) {
  const char *name = http_req_param(req, "name");
  if (!bus_queue_find(name)) return http_reply_problem(req, ERR_NOT_FOUND, "no such queue", NULL);
  json_t *ids = json_object_get(http_req_json(req), "ids");
  size_t i;
  json_t *v;
  json_array_foreach(ids, i, v) {
    if (!json_is_string(v) && !json_is_integer(v))
      return http_reply_problem(
          req, ERR_VALIDATION_FAILED, "ids must be dead-letter ids",
          json_pack("[{s:s,s:s}]", "field", "ids", "message", "each id must be a string"));
  }
  int n = 0;
  int rc = bus_redrive(http_req_app(req), name, ids, &n);
  if (rc < 0) return rc;
  return http_reply_json(req, 200, json_pack("{s:i}", "redriven", n));
}

int api_admin_alarms_list(http_req_t *req) {
  json_t *items;
  int rc = bus_alarms(http_req_app(req), &items);
  if (rc < 0) return rc;
  return http_reply_json(req, 200, json_pack("{s:o}", "items", items));
}

typedef struct {
  const char *type, *subject, *after_id;
  int64_t after_seq;
  int limit;
  json_t *items;
  int64_t next;
  bool unknown_after;
} events_q_t;

static int events_tx(store_tx_t *tx, void *arg) {
  events_q_t *q = arg;
  store_rows_t *rows = NULL;
  if (q->after_id) {
    int n = store_exec(tx, &rows, "SELECT seq FROM events WHERE id = ?", "s", q->after_id);
    if (n < 0) return n;
    if (n == 0) {
      q->unknown_after = true;
      return 0;
    }
    int64_t s = store_rows_int(rows, 0, 0);
    if (s > q->after_seq) q->after_seq = s;
    store_rows_free(&rows);
  }
  int n = store_exec(tx, &rows,
                     "SELECT " EVENTS_COLUMNS " FROM events WHERE seq > ? "
                     "AND (? IS NULL OR type = ?) AND (? IS NULL OR subject = ?) "
                     "ORDER BY seq LIMIT ?",
                     "issssi", q->after_seq, q->type, q->type, q->subject, q->subject,
                     (int64_t)q->limit + 1);
  if (n < 0) return n;
  q->next = 0;
  for (int i = 0; i < n && i < q->limit; i++) {
    json_array_append_new(q->items, events_row_to_json(rows, i));
    if (i == q->limit - 1 && n > q->limit) q->next = store_rows_int(rows, i, 0);
  }
  store_rows_free(&rows);
  return 0;
}

int api_admin_events_list(http_req_t *req) {
  int limit;
  const char *cursor;
  if (http_req_page(req, &limit, &cursor) < 0) return 0;
  int64_t after = http_validate_cursor(cursor);
  if (after < 0) return bad_cursor(req);
  events_q_t q = {http_req_query(req, "type"),
                  http_req_query(req, "subject"),
                  http_req_query(req, "after"),
                  after,
                  limit,
                  json_array(),
                  0,
                  false};
  int rc = store_read(http_req_app(req)->store, events_tx, &q);
  if (rc < 0 || q.unknown_after) {
    json_decref(q.items);
    if (rc < 0) return rc;
    return http_reply_problem(
        req, ERR_VALIDATION_FAILED, "after names no known event",
        json_pack("[{s:s,s:s}]", "field", "after", "message", "unknown event id"));
  }
  char nc[32];
  snprintf(nc, sizeof(nc), "%lld", (long long)q.next);
  return http_reply_json(req, 200,
                         json_pack("{s:o,s:o}", "items", q.items, "next_cursor",
                                   q.next ? json_string(nc) : json_null()));
}
