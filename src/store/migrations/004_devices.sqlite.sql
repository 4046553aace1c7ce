-- Commands for devices: queued until the device is connected, delivered when the
-- broker took them, then succeeded/failed by the device's ack, or expired.
CREATE TABLE commands (
  id TEXT PRIMARY KEY,
  device_id TEXT NOT NULL REFERENCES devices (id),
  type TEXT NOT NULL,
  payload TEXT NOT NULL,
  status TEXT NOT NULL,
  result TEXT,
  created_at TEXT NOT NULL,
  delivered_at TEXT,
  completed_at TEXT,
  expires_at TEXT NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
CREATE INDEX commands_device ON commands (device_id, status, created_at);
CREATE INDEX commands_expiry ON commands (status, expires_at_ms);

-- Events raised by devices, stored once per (device, device-chosen id).
CREATE TABLE device_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  device_id TEXT NOT NULL REFERENCES devices (id),
  event_id TEXT NOT NULL,
  type TEXT NOT NULL,
  time TEXT NOT NULL,
  data TEXT NOT NULL,
  received_at TEXT NOT NULL,
  UNIQUE (device_id, event_id)
);

CREATE INDEX sessions_device ON sessions (device_id);
