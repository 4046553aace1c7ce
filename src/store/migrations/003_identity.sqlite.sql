-- Users of both types. Local users have an email and an Argon2id hash; partner
-- users are known by their IDENTITY username and subject, and never store a password.
CREATE TABLE users (
  id TEXT PRIMARY KEY,
  type TEXT NOT NULL,
  email TEXT UNIQUE,
  username TEXT UNIQUE,
  subject TEXT,
  password_hash TEXT,
  name TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at TEXT NOT NULL
);

CREATE TABLE registrations (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users (id),
  status TEXT NOT NULL,
  kyc_id TEXT,
  session_id TEXT NOT NULL,
  created_at TEXT NOT NULL,
  decided_at TEXT
);
CREATE INDEX registrations_user ON registrations (user_id);
CREATE INDEX registrations_kyc ON registrations (kyc_id);

-- Refresh tokens are stored as hashes; a spent one presented again revokes its session.
CREATE TABLE refresh_tokens (
  hash TEXT PRIMARY KEY,
  session_id TEXT NOT NULL,
  spent INTEGER NOT NULL DEFAULT 0,
  expires_at_ms INTEGER NOT NULL
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Partner webhooks already accepted, for de-duplication by (partner, id).
CREATE TABLE webhooks (
  partner TEXT NOT NULL,
  id TEXT NOT NULL,
  received_at TEXT NOT NULL,
  PRIMARY KEY (partner, id)
);

-- Idempotency-Key records: the first answer, replayed for 24 h.
CREATE TABLE idempotency (
  principal TEXT NOT NULL,
  key TEXT NOT NULL,
  route TEXT NOT NULL,
  body_hash TEXT NOT NULL,
  status INTEGER,
  response TEXT,
  created_at_ms INTEGER NOT NULL,
  PRIMARY KEY (principal, key)
);
