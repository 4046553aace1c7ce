'use strict';
/*
 * The original team's stack for the four routes iotfin is benchmarked on:
 * Node.js + Express + jsonwebtoken + @hapi/boom + better-sqlite3.
 * Written the way that stack is usually written (an auth middleware that verifies
 * the JWT and looks its session up in the database on every request, prepared
 * statements, a better-sqlite3 transaction per write), with the same durability
 * as iotfin: SQLite in WAL mode with synchronous=FULL.
 *
 *   node server.js --seed   create the database, a key, one approved user with a
 *                           session, one active device owned by that user; print
 *                           {"token", "user_id", "device_id"} as one JSON line
 *   node server.js          serve on 127.0.0.1:$PORT (default 3000)
 *
 * Environment: PORT, HOST (127.0.0.1), DATA_DIR (./data): baseline.db and
 * es256.pem live there; WEB_CONCURRENCY (1): worker processes (node:cluster);
 * ACCESS_TTL_S (900), COMMAND_TTL_S (300) as in iotfin.
 *
 * jsonwebtoken 9 has no EdDSA, so tokens are ES256 (the contract allows either).
 */
const cluster = require('node:cluster');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const express = require('express');
const jwt = require('jsonwebtoken');
const Boom = require('@hapi/boom');
const Database = require('better-sqlite3');

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 3000);
const DATA_DIR = process.env.DATA_DIR || path.join(__dirname, 'data');
const WORKERS = Math.max(1, Number(process.env.WEB_CONCURRENCY || 1));
const ACCESS_TTL_S = Number(process.env.ACCESS_TTL_S || 900);
const COMMAND_TTL_S = Number(process.env.COMMAND_TTL_S || 300);
const ISSUER = 'iotfin';

// --- database ----------------------------------------------------------------

const SCHEMA = `
CREATE TABLE IF NOT EXISTS users (
  id TEXT PRIMARY KEY, type TEXT NOT NULL, email TEXT UNIQUE, name TEXT NOT NULL,
  status TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
  id TEXT PRIMARY KEY, tier TEXT NOT NULL, user_id TEXT, created_at TEXT NOT NULL,
  expires_at_ms INTEGER NOT NULL, revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS devices (
  id TEXT PRIMARY KEY, serial TEXT NOT NULL UNIQUE, model TEXT, status TEXT NOT NULL,
  owner_id TEXT, external_id TEXT, online INTEGER NOT NULL DEFAULT 0, last_seen_at TEXT,
  created_at TEXT NOT NULL, activated_at TEXT
);
CREATE INDEX IF NOT EXISTS devices_owner ON devices (owner_id, id);
CREATE TABLE IF NOT EXISTS commands (
  id TEXT PRIMARY KEY, device_id TEXT NOT NULL REFERENCES devices (id), type TEXT NOT NULL,
  payload TEXT NOT NULL, status TEXT NOT NULL, result TEXT, created_at TEXT NOT NULL,
  delivered_at TEXT, completed_at TEXT, expires_at TEXT NOT NULL, expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_device ON commands (device_id, status, created_at);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
  source TEXT NOT NULL, subject TEXT NOT NULL, time TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_subject ON events (subject, seq);
`;

function openDb() {
  fs.mkdirSync(DATA_DIR, { recursive: true });
  const db = new Database(path.join(DATA_DIR, 'baseline.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  db.exec(SCHEMA);
  return db;
}

function loadKey() {
  const file = path.join(DATA_DIR, 'es256.pem');
  if (!fs.existsSync(file)) {
    const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    fs.writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  }
  const privateKey = crypto.createPrivateKey(fs.readFileSync(file));
  const publicKey = crypto.createPublicKey(privateKey);
  const kid = crypto.createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64url')
    .slice(0, 16);
  return { privateKey, publicKey, kid };
}

const now = () => new Date().toISOString();

function signToken(key, { sub, sid, tier, ttl }) {
  return jwt.sign({ sid, tier }, key.privateKey, {
    algorithm: 'ES256',
    keyid: key.kid,
    issuer: ISSUER,
    subject: sub,
    expiresIn: ttl,
    jwtid: crypto.randomUUID(),
  });
}

// --- seed --------------------------------------------------------------------

function seed() {
  const db = openDb();
  const key = loadKey();
  const userId = crypto.randomUUID();
  const sid = crypto.randomUUID();
  const deviceId = crypto.randomUUID();
  const ttl = 7 * 24 * 3600; // long enough for any benchmark run
  const ts = now();
  db.transaction(() => {
    db.prepare(`INSERT INTO users (id, type, email, name, status, created_at)
                VALUES (?, 'local', ?, 'Bench User', 'approved', ?)`)
      .run(userId, `bench-${userId}@example.com`, ts);
    db.prepare(`INSERT INTO sessions (id, tier, user_id, created_at, expires_at_ms)
                VALUES (?, 'user', ?, ?, ?)`)
      .run(sid, userId, ts, Date.now() + ttl * 1000);
    db.prepare(`INSERT INTO devices (id, serial, model, status, owner_id, external_id, online,
                                     created_at, activated_at)
                VALUES (?, ?, 'bench-1', 'active', ?, ?, 0, ?, ?)`)
      .run(deviceId, `BENCH-${deviceId.slice(0, 8)}`, userId, `ext-${deviceId.slice(0, 8)}`, ts, ts);
  })();
  db.close();
  const token = signToken(key, { sub: userId, sid, tier: 'user', ttl });
  process.stdout.write(JSON.stringify({ token, user_id: userId, device_id: deviceId }) + '\n');
}

// --- app ---------------------------------------------------------------------

function problem(res, boom) {
  const { statusCode, payload, headers } = boom.output;
  res.set(headers);
  res.status(statusCode).type('application/problem+json').send(JSON.stringify({
    type: 'about:blank',
    title: payload.error,
    status: statusCode,
    detail: payload.message,
    code: boom.data && boom.data.code ? boom.data.code : codeFor(statusCode),
    ...(boom.data && boom.data.errors ? { errors: boom.data.errors } : {}),
  }));
}

function codeFor(status) {
  return {
    400: 'validation_failed', 401: 'unauthenticated', 403: 'forbidden', 404: 'not_found',
    405: 'method_not_allowed', 409: 'conflict', 413: 'payload_too_large',
    415: 'unsupported_media_type', 429: 'rate_limited',
  }[status] || 'internal';
}

function createApp(db, key) {
  const stmt = {
    insertSession: db.prepare(`INSERT INTO sessions (id, tier, user_id, created_at, expires_at_ms)
                               VALUES (?, ?, ?, ?, ?)`),
    session: db.prepare('SELECT tier, user_id, expires_at_ms, revoked_at FROM sessions WHERE id = ?'),
    user: db.prepare('SELECT id, type, email, name, status, created_at FROM users WHERE id = ?'),
    device: db.prepare(`SELECT id, serial, model, status, external_id, online, last_seen_at,
                               created_at, activated_at
                        FROM devices WHERE id = ? AND owner_id = ?`),
    deviceStatus: db.prepare('SELECT status FROM devices WHERE id = ? AND owner_id = ?'),
    insertCommand: db.prepare(`INSERT INTO commands (id, device_id, type, payload, status,
                                 created_at, expires_at, expires_at_ms)
                               VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)`),
    insertEvent: db.prepare(`INSERT INTO events (id, type, source, subject, time, data)
                             VALUES (?, ?, '/iotfin', ?, ?, ?)`),
  };

  const createCommand = db.transaction((userId, deviceId, body) => {
    const device = stmt.deviceStatus.get(deviceId, userId);
    if (!device) throw Boom.notFound('no such device');
    if (device.status !== 'active') {
      throw Boom.conflict('commands go to active devices only', { code: 'device_not_active' });
    }
    const id = crypto.randomUUID();
    const createdMs = Date.now();
    const expiresMs = createdMs + (body.ttl_seconds ?? COMMAND_TTL_S) * 1000;
    const command = {
      id,
      type: body.type,
      payload: body.payload,
      status: 'queued',
      result: null,
      created_at: new Date(createdMs).toISOString(),
      delivered_at: null,
      completed_at: null,
      expires_at: new Date(expiresMs).toISOString(),
    };
    stmt.insertCommand.run(id, deviceId, body.type, JSON.stringify(body.payload),
      command.created_at, command.expires_at, expiresMs);
    stmt.insertEvent.run(crypto.randomUUID(), 'device.command.queued', `devices/${deviceId}`,
      command.created_at, JSON.stringify({ device_id: deviceId, command_id: id, type: body.type }));
    return command;
  });

  // Verifies the bearer token and that its session is alive (one DB read per request).
  const authenticate = (tier) => (req, res, next) => {
    const header = req.get('authorization') || '';
    const [scheme, token] = header.split(' ');
    if (scheme !== 'Bearer' || !token) {
      return next(Boom.unauthorized('a bearer token is required', 'Bearer'));
    }
    let claims;
    try {
      claims = jwt.verify(token, key.publicKey, { algorithms: ['ES256'], issuer: ISSUER });
    } catch (err) {
      return next(Boom.unauthorized('the token is not valid', 'Bearer'));
    }
    const session = stmt.session.get(claims.sid);
    if (!session || session.revoked_at !== null || session.expires_at_ms <= Date.now() ||
        session.tier !== claims.tier) {
      return next(Boom.unauthorized('the session is not valid', 'Bearer'));
    }
    if (claims.tier !== tier) return next(Boom.forbidden(`a ${tier} token is required`));
    req.auth = claims;
    next();
  };

  const validateCommand = (req, res, next) => {
    if (!req.is('application/json')) {
      return next(Boom.unsupportedMediaType('the body must be application/json'));
    }
    const body = req.body;
    const errors = [];
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      errors.push({ field: '', message: 'must be an object' });
    } else {
      for (const field of Object.keys(body)) {
        if (!['type', 'payload', 'ttl_seconds'].includes(field)) {
          errors.push({ field, message: 'unknown field' });
        }
      }
      if (typeof body.type !== 'string' || !/^[a-z0-9._-]{1,64}$/.test(body.type)) {
        errors.push({ field: 'type', message: 'must be 1-64 characters of a-z, 0-9, ".", "_", "-"' });
      }
      if (body.payload === null || typeof body.payload !== 'object' || Array.isArray(body.payload)) {
        errors.push({ field: 'payload', message: 'must be an object' });
      } else if (Buffer.byteLength(JSON.stringify(body.payload)) > 8192) {
        errors.push({ field: 'payload', message: 'must be at most 8 KiB' });
      }
      if (body.ttl_seconds !== undefined &&
          !(Number.isInteger(body.ttl_seconds) && body.ttl_seconds >= 1 && body.ttl_seconds <= 86400)) {
        errors.push({ field: 'ttl_seconds', message: 'must be an integer from 1 to 86400' });
      }
    }
    if (errors.length) {
      return next(Boom.badRequest('the body does not match the schema',
        { code: 'validation_failed', errors }));
    }
    next();
  };

  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');

  app.post('/v1/sessions/anonymous', (req, res) => {
    const sid = crypto.randomUUID();
    stmt.insertSession.run(sid, 'anonymous', null, now(), Date.now() + ACCESS_TTL_S * 1000);
    const accessToken = signToken(key, { sub: sid, sid, tier: 'anonymous', ttl: ACCESS_TTL_S });
    res.status(201).json({
      access_token: accessToken,
      token_type: 'Bearer',
      expires_in: ACCESS_TTL_S,
      tier: 'anonymous',
    });
  });

  app.get('/v1/me', authenticate('user'), (req, res) => {
    const user = stmt.user.get(req.auth.sub);
    if (!user) throw Boom.notFound('no such user');
    res.json(user);
  });

  app.get('/v1/devices/:id', authenticate('user'), (req, res) => {
    const device = stmt.device.get(req.params.id, req.auth.sub);
    if (!device) throw Boom.notFound('no such device');
    res.json({ ...device, online: device.online !== 0 });
  });

  app.post('/v1/devices/:id/commands',
    authenticate('user'),
    express.json({ limit: '64kb', strict: false }),
    validateCommand,
    (req, res) => {
      // BEGIN IMMEDIATE: with several workers, a deferred transaction that reads
      // first could not upgrade to a write while another worker writes.
      res.status(202).json(createCommand.immediate(req.auth.sub, req.params.id, req.body));
    });

  app.use((req, res, next) => next(Boom.notFound('no such route')));

  // eslint-disable-next-line no-unused-vars
  app.use((err, req, res, next) => {
    if (err.type === 'entity.parse.failed') {
      return problem(res, Boom.badRequest('the body is not JSON', { code: 'invalid_json' }));
    }
    if (err.type === 'entity.too.large') {
      return problem(res, Boom.entityTooLarge('the body is over 64 KiB'));
    }
    const boom = Boom.isBoom(err) ? err : Boom.boomify(err instanceof Error ? err : new Error(String(err)));
    if (boom.isServer) console.error(err);
    problem(res, boom);
  });

  return app;
}

function serve() {
  const db = openDb();
  const key = loadKey();
  const server = createApp(db, key).listen(PORT, HOST, () => {
    if (cluster.isPrimary) {
      process.stdout.write(`express-baseline ready http=http://${HOST}:${server.address().port}\n`);
    } else {
      process.send({ ready: true });
    }
  });
  const stop = () => server.close(() => { db.close(); process.exit(0); });
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv.includes('--seed')) {
  seed();
} else if (WORKERS > 1 && cluster.isPrimary) {
  openDb().close(); // schema and WAL once, before the workers race for it
  loadKey();
  let ready = 0;
  for (let i = 0; i < WORKERS; i++) {
    cluster.fork().on('message', (m) => {
      if (m && m.ready && ++ready === WORKERS) {
        process.stdout.write(`express-baseline ready http=http://${HOST}:${PORT} workers=${WORKERS}\n`);
      }
    });
  }
  const stop = () => {
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  cluster.on('exit', () => {
    if (Object.keys(cluster.workers).length === 0) process.exit(0);
  });
} else {
  serve();
}
