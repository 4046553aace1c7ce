-- The event log: every state change writes its CloudEvent here in the same
-- transaction (the outbox). seq gives one total order for cursors and streams.
CREATE TABLE events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL,
  source TEXT NOT NULL,
  subject TEXT NOT NULL,
  time TEXT NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX events_type ON events (type, seq);
CREATE INDEX events_subject ON events (subject, seq);

-- Sessions back every token: revoking one refuses its tokens at once.
CREATE TABLE sessions (
  id TEXT PRIMARY KEY,
  tier TEXT NOT NULL,
  user_id TEXT,
  device_id TEXT,
  created_at TEXT NOT NULL,
  expires_at_ms INTEGER NOT NULL,
  revoked_at TEXT
);

-- Devices: imported from the supplier manifest (status 'unclaimed'), then claimed.
CREATE TABLE devices (
  id TEXT PRIMARY KEY,
  serial TEXT NOT NULL UNIQUE,
  model TEXT,
  status TEXT NOT NULL,
  owner_id TEXT,
  external_id TEXT,
  online INTEGER NOT NULL DEFAULT 0,
  last_seen_at TEXT,
  created_at TEXT NOT NULL,
  claimed_at TEXT,
  activated_at TEXT
);
CREATE INDEX devices_owner ON devices (owner_id, id);
