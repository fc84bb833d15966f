import Database from 'better-sqlite3';
import {
  type DeviceCertificate,
  type DeviceId,
  type DocId,
  type EnvelopeKind,
  ErrorCode,
  type Result,
  type Seq,
  type TierName,
  type UserId,
  bytesEqual,
  err,
  fromB64,
  ok,
  toB64,
} from '@keel/engine';
import type { AppendOutcome, AppendRequest, DeviceRecord, LogEntry, RelayStore } from './relay-store.js';

export type Synchronous = 'FULL' | 'NORMAL';

export interface SqliteStoreOptions {
  /** File path, or ':memory:' for throwaway stores. */
  readonly path: string;
  /**
   * FULL (default) fsyncs the WAL on every commit: an acknowledged update survives power loss,
   * not only a crashed process. NORMAL survives `kill -9` but not power loss.
   */
  readonly synchronous?: Synchronous;
}

const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE users (
    user_id     TEXT PRIMARY KEY,
    user_key    BLOB NOT NULL,
    created_at  INTEGER NOT NULL
  );
  CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(user_id),
    device_key    BLOB NOT NULL,
    issuer        TEXT,
    issued_at     INTEGER NOT NULL,
    cert_sig      BLOB NOT NULL,
    registered_at INTEGER NOT NULL,
    revoked_at    INTEGER
  );
  CREATE INDEX devices_by_user ON devices(user_id);
  CREATE TABLE docs (
    doc_id     TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(user_id),
    head_seq   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
  );
  -- Last counter of each author per document: survives log pruning by snapshots.
  CREATE TABLE doc_authors (
    doc_id       TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    last_counter INTEGER NOT NULL,
    PRIMARY KEY (doc_id, device_id)
  ) WITHOUT ROWID;
  -- Ciphertext only: the relay cannot read what it stores.
  CREATE TABLE log (
    doc_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    counter     INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    lane        INTEGER NOT NULL,
    nonce       BLOB NOT NULL,
    ct          BLOB NOT NULL,
    sig         BLOB NOT NULL,
    received_at INTEGER NOT NULL
  );
  CREATE UNIQUE INDEX log_by_seq ON log(doc_id, seq);
  CREATE UNIQUE INDEX log_by_author ON log(doc_id, device_id, counter);
  `,
  `
  -- No foreign key to users: a payment may name a user before their first device connects.
  CREATE TABLE entitlements (
    user_id    TEXT PRIMARY KEY,
    tier       TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    source     TEXT NOT NULL
  );
  CREATE TABLE usage (
    user_id TEXT NOT NULL,
    day     TEXT NOT NULL,
    bytes   INTEGER NOT NULL,
    PRIMARY KEY (user_id, day)
  ) WITHOUT ROWID;
  `,
];

interface DeviceRow {
  device_id: string;
  user_id: string;
  device_key: Buffer;
  user_key: Buffer;
  issuer: string | null;
  issued_at: number;
  cert_sig: Buffer;
  registered_at: number;
  revoked_at: number | null;
}

interface LogRow {
  seq: number;
  device_id: string;
  counter: number;
  kind: string;
  epoch: number;
  lane: number;
  nonce: Buffer;
  ct: Buffer;
  sig: Buffer;
  received_at: number;
}

const toDeviceRecord = (row: DeviceRow): DeviceRecord => ({
  deviceId: row.device_id as DeviceId,
  userId: row.user_id as UserId,
  publicKey: new Uint8Array(row.device_key),
  registeredAt: row.registered_at,
  revokedAt: row.revoked_at,
  cert: {
    user: row.user_id as UserId,
    userKey: toB64(row.user_key),
    device: row.device_id as DeviceId,
    deviceKey: toB64(row.device_key),
    issuer: row.issuer as DeviceId | null,
    issuedAt: row.issued_at,
    sig: toB64(row.cert_sig),
  },
});

const toLogEntry = (docId: DocId, row: LogRow): LogEntry => ({
  seq: row.seq as Seq,
  receivedAt: row.received_at,
  env: {
    doc: docId,
    kind: row.kind as EnvelopeKind,
    epoch: row.epoch,
    device: row.device_id as DeviceId,
    counter: row.counter,
    lane: row.lane,
    nonce: toB64(row.nonce),
    ct: toB64(row.ct),
    sig: toB64(row.sig),
  },
});

/** The embedded relay store: one SQLite file in WAL mode. */
export const openSqliteStore = (options: SqliteStoreOptions): RelayStore => {
  const db = new Database(options.path);
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${options.synchronous ?? 'FULL'}`);
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  migrate(db);

  const stmt = {
    device: db.prepare<[string], DeviceRow>(
      `SELECT d.*, u.user_key FROM devices d JOIN users u USING (user_id) WHERE d.device_id = ?`,
    ),
    devicesOfUser: db.prepare<[string], DeviceRow>(
      `SELECT d.*, u.user_key FROM devices d JOIN users u USING (user_id) WHERE d.user_id = ? ORDER BY d.registered_at, d.device_id`,
    ),
    user: db.prepare<[string], { user_key: Buffer }>(`SELECT user_key FROM users WHERE user_id = ?`),
    insertUser: db.prepare(`INSERT INTO users (user_id, user_key, created_at) VALUES (?, ?, ?)`),
    countDevices: db.prepare<[string], { n: number }>(`SELECT count(*) AS n FROM devices WHERE user_id = ?`),
    insertDevice: db.prepare(
      `INSERT INTO devices (device_id, user_id, device_key, issuer, issued_at, cert_sig, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
    ),
    doc: db.prepare<[string], { user_id: string; head_seq: number }>(`SELECT user_id, head_seq FROM docs WHERE doc_id = ?`),
    insertDoc: db.prepare(`INSERT INTO docs (doc_id, user_id, head_seq, created_at) VALUES (?, ?, 0, ?)`),
    setHead: db.prepare(`UPDATE docs SET head_seq = ? WHERE doc_id = ?`),
    lastCounter: db.prepare<[string, string], { last_counter: number }>(
      `SELECT last_counter FROM doc_authors WHERE doc_id = ? AND device_id = ?`,
    ),
    setCounter: db.prepare(
      `INSERT INTO doc_authors (doc_id, device_id, last_counter) VALUES (?, ?, ?)
       ON CONFLICT (doc_id, device_id) DO UPDATE SET last_counter = excluded.last_counter`,
    ),
    byAuthor: db.prepare<[string, string, number], { seq: number; sig: Buffer }>(
      `SELECT seq, sig FROM log WHERE doc_id = ? AND device_id = ? AND counter = ?`,
    ),
    insertLog: db.prepare(
      `INSERT INTO log (doc_id, seq, device_id, counter, kind, epoch, lane, nonce, ct, sig, received_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    readLog: db.prepare<[string, number, number], LogRow>(
      `SELECT seq, device_id, counter, kind, epoch, lane, nonce, ct, sig, received_at
       FROM log WHERE doc_id = ? AND seq > ? ORDER BY seq LIMIT ?`,
    ),
    ping: db.prepare(`SELECT 1`),
    entitlement: db.prepare<[string], { tier: string; updated_at: number; source: string }>(
      `SELECT tier, updated_at, source FROM entitlements WHERE user_id = ?`,
    ),
    setEntitlement: db.prepare(
      `INSERT INTO entitlements (user_id, tier, updated_at, source) VALUES (?, ?, ?, ?)
       ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier, updated_at = excluded.updated_at, source = excluded.source`,
    ),
    usage: db.prepare<[string, string], { bytes: number }>(`SELECT bytes FROM usage WHERE user_id = ? AND day = ?`),
    addUsage: db.prepare(
      `INSERT INTO usage (user_id, day, bytes) VALUES (?, ?, ?)
       ON CONFLICT (user_id, day) DO UPDATE SET bytes = bytes + excluded.bytes`,
    ),
  };

  const registerTx = db.transaction(
    (cert: DeviceCertificate, publicKey: Uint8Array, userKey: Uint8Array, now: number): Result<DeviceRecord> => {
      const existing = stmt.device.get(cert.device);
      if (existing) {
        if (existing.user_id !== cert.user) return err(ErrorCode.BAD_CERTIFICATE, 'device is registered to another user');
        return ok(toDeviceRecord(existing));
      }
      if (cert.issuer !== null) {
        // Checked again inside the transaction: the issuer may have been revoked since hello.
        const issuer = stmt.device.get(cert.issuer);
        if (!issuer || issuer.user_id !== cert.user || issuer.revoked_at !== null) {
          return err(ErrorCode.BAD_CERTIFICATE, 'certificate issuer is not a live device of this user');
        }
      }
      const user = stmt.user.get(cert.user);
      if (!user) {
        if (cert.issuer !== null) return err(ErrorCode.BAD_CERTIFICATE, 'unknown user: the first device must be certified by the user key');
        stmt.insertUser.run(cert.user, userKey, now);
      } else if (cert.issuer === null && stmt.countDevices.get(cert.user)!.n > 0) {
        return err(ErrorCode.BAD_CERTIFICATE, 'this user has devices: a new device must be certified by one of them');
      }
      stmt.insertDevice.run(cert.device, cert.user, publicKey, cert.issuer, cert.issuedAt, fromB64(cert.sig), now);
      return ok(toDeviceRecord(stmt.device.get(cert.device)!));
    },
  );

  const appendOne = (req: AppendRequest, now: number): AppendOutcome => {
    const { env, userId } = req;
    let doc = stmt.doc.get(env.doc);
    if (doc && doc.user_id !== userId) {
      return { status: 'rejected', error: { code: ErrorCode.NOT_AUTHORIZED, message: 'document belongs to another user' } };
    }
    const last = stmt.lastCounter.get(env.doc, env.device)?.last_counter ?? 0;
    if (env.counter <= last) {
      const prior = stmt.byAuthor.get(env.doc, env.device, env.counter);
      if (prior && bytesEqual(prior.sig, fromB64(env.sig))) return { status: 'duplicate', seq: prior.seq as Seq };
      return {
        status: 'rejected',
        error: { code: ErrorCode.COUNTER_REUSED, message: `counter ${env.counter} already used (last is ${last})` },
      };
    }
    if (env.counter !== last + 1) {
      return {
        status: 'rejected',
        error: { code: ErrorCode.COUNTER_GAP, message: `counter ${env.counter} skips ahead (expected ${last + 1})` },
      };
    }
    if (!doc) {
      stmt.insertDoc.run(env.doc, userId, now);
      doc = { user_id: userId, head_seq: 0 };
    }
    const seq = doc.head_seq + 1;
    stmt.insertLog.run(
      env.doc,
      seq,
      env.device,
      env.counter,
      env.kind,
      env.epoch,
      env.lane,
      fromB64(env.nonce),
      fromB64(env.ct),
      fromB64(env.sig),
      now,
    );
    stmt.setHead.run(seq, env.doc);
    stmt.setCounter.run(env.doc, env.device, env.counter);
    if (req.meter) stmt.addUsage.run(userId, req.meter.day, req.meter.bytes);
    return { status: 'stored', seq: seq as Seq };
  };

  const appendTx = db.transaction((batch: readonly AppendRequest[], now: number) => batch.map((req) => appendOne(req, now)));

  let closed = false;
  return {
    getDevice: async (deviceId) => {
      const row = stmt.device.get(deviceId);
      return row && toDeviceRecord(row);
    },
    listDevices: async (userId) => stmt.devicesOfUser.all(userId).map(toDeviceRecord),
    registerDevice: async (cert, publicKey, userKey, now) => registerTx.immediate(cert, publicKey, userKey, now),
    docOwner: async (docId) => stmt.doc.get(docId)?.user_id as UserId | undefined,
    append: async (batch, now) => (batch.length === 0 ? [] : appendTx.immediate(batch, now)),
    readLog: async (docId, after, limit) => stmt.readLog.all(docId, after, limit).map((row) => toLogEntry(docId, row)),
    headSeq: async (docId) => (stmt.doc.get(docId)?.head_seq ?? 0) as Seq,
    getEntitlement: async (userId) => {
      const row = stmt.entitlement.get(userId);
      return row && { userId, tier: row.tier as TierName, updatedAt: row.updated_at, source: row.source };
    },
    setEntitlement: async (userId, tier, now, source) => {
      stmt.setEntitlement.run(userId, tier, now, source);
      return { userId, tier, updatedAt: now, source };
    },
    usage: async (userId, day) => stmt.usage.get(userId, day)?.bytes ?? 0,
    ping: async () => {
      stmt.ping.get();
    },
    close: async () => {
      if (closed) return;
      closed = true;
      db.close();
    },
  };
};

const migrate = (db: Database.Database): void => {
  db.exec(`CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
  const row = db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'schema_version'`).get();
  const current = row ? Number(row.value) : 0;
  if (current > MIGRATIONS.length) {
    throw new Error(`database schema version ${current} is newer than this relay (${MIGRATIONS.length}); upgrade the relay`);
  }
  for (let version = current; version < MIGRATIONS.length; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version]!);
      db.prepare(`INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(
        String(version + 1),
      );
    }).immediate();
  }
};

