-- PostgreSQL twin of 003_identity.sqlite.sql.
CREATE TABLE users (
  id TEXT COLLATE "C" PRIMARY KEY,
  type TEXT COLLATE "C" NOT NULL,
  email TEXT COLLATE "C" UNIQUE,
  username TEXT COLLATE "C" UNIQUE,
  subject TEXT COLLATE "C",
  password_hash TEXT,
  name TEXT NOT NULL,
  status TEXT COLLATE "C" NOT NULL,
  created_at TEXT COLLATE "C" NOT NULL
);

CREATE TABLE registrations (
  id TEXT COLLATE "C" PRIMARY KEY,
  user_id TEXT COLLATE "C" NOT NULL REFERENCES users (id),
  status TEXT COLLATE "C" NOT NULL,
  kyc_id TEXT COLLATE "C",
  session_id TEXT COLLATE "C" NOT NULL,
  created_at TEXT COLLATE "C" NOT NULL,
  decided_at TEXT COLLATE "C"
);
CREATE INDEX registrations_user ON registrations (user_id);
CREATE INDEX registrations_kyc ON registrations (kyc_id);

CREATE TABLE refresh_tokens (
  hash TEXT COLLATE "C" PRIMARY KEY,
  session_id TEXT COLLATE "C" NOT NULL,
  spent INTEGER NOT NULL DEFAULT 0,
  expires_at_ms BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE webhooks (
  partner TEXT COLLATE "C" NOT NULL,
  id TEXT COLLATE "C" NOT NULL,
  received_at TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY (partner, id)
);

CREATE TABLE idempotency (
  principal TEXT COLLATE "C" NOT NULL,
  key TEXT COLLATE "C" NOT NULL,
  route TEXT COLLATE "C" NOT NULL,
  body_hash TEXT COLLATE "C" NOT NULL,
  status INTEGER,
  response TEXT,
  created_at_ms BIGINT NOT NULL,
  PRIMARY KEY (principal, key)
);
