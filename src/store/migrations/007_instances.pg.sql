-- PostgreSQL twin of 007_instances.sqlite.sql.
-- State that one process used to keep in memory, moved here so that several
-- instances on one database share it (CONTRACT section 10).
-- The Ed25519 signing keys: a token signed by one instance verifies on all. secret is
-- the 64-byte libsodium secret key in base64url; the newest created_at_ms signs.
CREATE TABLE signing_keys (
  kid TEXT COLLATE "C" PRIMARY KEY,
  secret TEXT COLLATE "C" NOT NULL,
  created_at_ms BIGINT NOT NULL
);
-- Which instance leased an in-flight message: a restarted instance takes back its own
-- leases at once and leaves those of the others to their visibility timeout.
ALTER TABLE queue_messages ADD COLUMN claimed_by TEXT COLLATE "C";
-- Whether the device listens to its commands topic now (the plugin said "subscribed"):
-- any instance may then publish its commands.
ALTER TABLE devices ADD COLUMN subscribed INTEGER NOT NULL DEFAULT 0;
-- Which instance runs a request whose Idempotency-Key is still pending: when it
-- restarts, its unfinished ones died with it and their keys are free again.
ALTER TABLE idempotency ADD COLUMN owner TEXT COLLATE "C";
-- Console sessions: a login on one instance works on every instance.
CREATE TABLE console_sessions (
  sid_hash TEXT COLLATE "C" PRIMARY KEY,
  csrf TEXT COLLATE "C" NOT NULL,
  created_at_ms BIGINT NOT NULL,
  expires_at_ms BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at_ms);
