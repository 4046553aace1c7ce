-- Queue messages: one row per (queue, event). state is ready, in_flight or dead;
-- a ready message whose visible_at_ms is in the future is "delayed", an in_flight
-- one whose visible_at_ms has passed is receivable again (visibility timeout).
-- lease changes at every receive so a late answer from an old receive is ignored.
CREATE TABLE queue_messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  queue TEXT NOT NULL,
  event_seq INTEGER NOT NULL REFERENCES events (seq),
  group_key TEXT,
  state TEXT NOT NULL DEFAULT 'ready',
  visible_at_ms INTEGER NOT NULL,
  receive_count INTEGER NOT NULL DEFAULT 0,
  lease INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  created_at_ms INTEGER NOT NULL,
  dead_at TEXT
);
CREATE INDEX queue_messages_state ON queue_messages (state, id);
CREATE INDEX queue_messages_inflight ON queue_messages (state, visible_at_ms);
CREATE INDEX queue_messages_group ON queue_messages (queue, group_key, id);
CREATE INDEX queue_messages_queue ON queue_messages (queue, state, id);

-- Effectively once: what each handler has finished, by causing event.
CREATE TABLE handler_done (
  handler TEXT NOT NULL,
  event_id TEXT NOT NULL,
  done_at TEXT NOT NULL,
  PRIMARY KEY (handler, event_id)
);

-- Alarms watch dead-letter queues: dead-letters:<queue>.
CREATE TABLE alarms (
  name TEXT PRIMARY KEY,
  queue TEXT NOT NULL,
  state TEXT NOT NULL,
  count INTEGER NOT NULL,
  raised_at TEXT,
  cleared_at TEXT
);
