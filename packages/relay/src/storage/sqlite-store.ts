import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, openSync } from 'node:fs';
import Database from 'better-sqlite3';
import {
  type CrisisSignal,
  CrisisSignalSchema,
  type DeviceCertificate,
  type DeviceId,
  type DocId,
  type EnvelopeKind,
  type EpochRecord,
  EpochRecordSchema,
  ErrorCode,
  type RecoveryReset,
  RecoveryResetSchema,
  type Result,
  type Revocation,
  RevocationSchema,
  type Seq,
  type TierName,
  type UserId,
  bytesEqual,
  err,
  fromB64,
  ok,
  toB64,
} from '@keel/engine';
import { GENESIS_HASH, auditUserRef, canonicalDetail, hashAuditRow, hashLegacyAuditRow } from '../audit/audit-chain.js';
import type {
  AppendOutcome,
  AppendRequest,
  AuditDraft,
  AuditRecord,
  CrisisSignalLimits,
  DeviceLimits,
  DeviceRecord,
  GraceRecord,
  LogEntry,
  PaymentWrite,
  RecoveryEnrolment,
  RelayStore,
  ResetOutcome,
  SignupTokenOutcome,
  SnapshotOutcome,
  SubscriptionRecord,
  UserRecovery,
} from './relay-store.js';
import { type UserDataOps, createUserDataOps } from './user-data.js';

export type Synchronous = 'FULL' | 'NORMAL';

/** The relay store plus the operator commands that only a SQLite file supports (storage/user-data.ts). */
export type SqliteRelayStore = RelayStore & UserDataOps;

export interface SqliteStoreOptions {
  /** File path, or ':memory:' for throwaway stores. */
  readonly path: string;
  /**
   * FULL (default) fsyncs the WAL on every commit: an acknowledged update survives power loss,
   * not only a crashed process. NORMAL survives `kill -9` but not power loss.
   */
  readonly synchronous?: Synchronous;
  /** Open an existing, current database without writing to it (`keel-relay audit verify`). */
  readonly readonly?: boolean;
}

/** Schema migrations, applied in order; exported for the migration tests. */
export const MIGRATIONS: readonly string[] = [
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
  `
  -- Payment state: opaque provider ids, price, tier, status and times; never a name, email,
  -- address, card or raw event body (DESIGN.md, "Payments, entitlements, grace period").
  CREATE TABLE subscriptions (
    subscription_id TEXT PRIMARY KEY,
    customer_id     TEXT,
    user_id         TEXT NOT NULL,
    price_id        TEXT,
    tier            TEXT,
    status          TEXT NOT NULL,
    event_at        INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
  );
  CREATE INDEX subscriptions_by_user ON subscriptions(user_id);
  -- Each provider event id is applied once.
  CREATE TABLE payment_events (
    event_id    TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    received_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  -- Failures that started a grace period: the history that shortens the next one.
  CREATE TABLE payment_failures (
    user_id TEXT NOT NULL,
    at      INTEGER NOT NULL
  );
  CREATE INDEX payment_failures_by_user ON payment_failures(user_id, at);
  CREATE TABLE grace_periods (
    user_id    TEXT PRIMARY KEY,
    paid_tier  TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ends_at    INTEGER NOT NULL,
    failures   INTEGER NOT NULL
  );
  -- Append-only, hash-chained audit trail (audit/audit-chain.ts); pseudonymous ids and codes only.
  CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    op        TEXT NOT NULL,
    user_id   TEXT,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
  );
  CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
  CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
  `,
  `
  -- Latest snapshot per document (ciphertext only). Log entries it covers are pruned.
  CREATE TABLE snapshots (
    doc_id      TEXT PRIMARY KEY,
    base        INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    counter     INTEGER NOT NULL,
    epoch       INTEGER NOT NULL,
    lane        INTEGER NOT NULL,
    nonce       BLOB NOT NULL,
    ct          BLOB NOT NULL,
    sig         BLOB NOT NULL,
    received_at INTEGER NOT NULL
  );
  `,
  `
  -- Key epochs after the first: each secret sealed per device (ciphertext only), signed.
  CREATE TABLE epochs (
    user_id    TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    record     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, epoch)
  ) WITHOUT ROWID;
  `,
  `
  -- Per-user namespaces: a document is (user_id, doc_id). Before, doc ids were one global
  -- namespace and the first pusher owned a document, so anyone who knew an id could squat it.
  CREATE TABLE docs_v2 (
    user_id    TEXT NOT NULL REFERENCES users(user_id),
    doc_id     TEXT NOT NULL,
    head_seq   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, doc_id)
  ) WITHOUT ROWID;
  INSERT INTO docs_v2 SELECT user_id, doc_id, head_seq, created_at FROM docs;
  CREATE TABLE doc_authors_v2 (
    user_id      TEXT NOT NULL,
    doc_id       TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    last_counter INTEGER NOT NULL,
    PRIMARY KEY (user_id, doc_id, device_id)
  ) WITHOUT ROWID;
  INSERT INTO doc_authors_v2 SELECT d.user_id, a.doc_id, a.device_id, a.last_counter FROM doc_authors a JOIN docs d USING (doc_id);
  CREATE TABLE log_v2 (
    user_id     TEXT NOT NULL,
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
  INSERT INTO log_v2 SELECT d.user_id, l.doc_id, l.seq, l.device_id, l.counter, l.kind, l.epoch, l.lane, l.nonce, l.ct, l.sig, l.received_at
    FROM log l JOIN docs d USING (doc_id);
  CREATE TABLE snapshots_v2 (
    user_id     TEXT NOT NULL,
    doc_id      TEXT NOT NULL,
    base        INTEGER NOT NULL,
    device_id   TEXT NOT NULL,
    counter     INTEGER NOT NULL,
    epoch       INTEGER NOT NULL,
    lane        INTEGER NOT NULL,
    nonce       BLOB NOT NULL,
    ct          BLOB NOT NULL,
    sig         BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, doc_id)
  );
  INSERT INTO snapshots_v2 SELECT d.user_id, s.doc_id, s.base, s.device_id, s.counter, s.epoch, s.lane, s.nonce, s.ct, s.sig, s.received_at
    FROM snapshots s JOIN docs d USING (doc_id);
  DROP TABLE log;
  DROP TABLE doc_authors;
  DROP TABLE snapshots;
  DROP TABLE docs;
  ALTER TABLE docs_v2 RENAME TO docs;
  ALTER TABLE doc_authors_v2 RENAME TO doc_authors;
  ALTER TABLE log_v2 RENAME TO log;
  ALTER TABLE snapshots_v2 RENAME TO snapshots;
  CREATE UNIQUE INDEX log_by_seq ON log(user_id, doc_id, seq);
  CREATE UNIQUE INDEX log_by_author ON log(user_id, doc_id, device_id, counter);
  `,
  `
  -- Updates larger than a frame travel in parts; index and count are signed, so they are kept.
  ALTER TABLE log ADD COLUMN part_index INTEGER;
  ALTER TABLE log ADD COLUMN part_count INTEGER;
  `,
  `
  -- The payment provider's customer id was kept but never used: one fewer identifier about a person.
  ALTER TABLE subscriptions DROP COLUMN customer_id;
  `,
  `
  -- Recovery: the recovery public key the first device's certificate names, the generation of
  -- the last reset it signed (a reset is applied once), and the root key sealed to it. Users
  -- created before recovery keys keep NULLs. Devices keep their issuer ('recovery' for devices
  -- the recovery key enrolled).
  ALTER TABLE users ADD COLUMN recovery_key BLOB;
  ALTER TABLE users ADD COLUMN recovery_gen INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE users ADD COLUMN escrow BLOB;
  CREATE UNIQUE INDEX users_by_recovery_key ON users(recovery_key) WHERE recovery_key IS NOT NULL;
  CREATE INDEX devices_by_issuer ON devices(issuer);
  -- A second issuer of a device: a live device of the same user signed a certificate for it.
  CREATE TABLE vouches (
    device_id  TEXT NOT NULL REFERENCES devices(device_id),
    issuer     TEXT NOT NULL REFERENCES devices(device_id),
    user_id    TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    sig        BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, issuer)
  ) WITHOUT ROWID;
  CREATE INDEX vouches_by_user ON vouches(user_id);
  `,
  `
  -- The signed records devices believe a revocation from (JSON, as signed): per revoked device,
  -- the revocation that cut it off — its own, or for a cascade the one of the device it hung
  -- from. One per device, so bounded by the user's registrations. Devices revoked before this
  -- migration have none.
  CREATE TABLE revocations (
    device_id  TEXT PRIMARY KEY REFERENCES devices(device_id),
    user_id    TEXT NOT NULL,
    record     TEXT NOT NULL,
    created_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX revocations_by_user ON revocations(user_id, created_at);
  -- The last reset applied, as the recovery key signed it (JSON), and when the relay applied it:
  -- the devices revoked by then and still revoked stand on it. NULL before the first.
  ALTER TABLE users ADD COLUMN reset TEXT;
  ALTER TABLE users ADD COLUMN reset_at INTEGER;
  `,
  `
  -- Audit rows hash a keyed pseudonym of the user id (user_ref) instead of the id, so deleting a
  -- user can erase user_id and leave the chain intact. The JS step of this migration (AUDIT_REF_STEP)
  -- re-links the existing rows in the new format and re-creates the update trigger, which from
  -- then on allows exactly one update: setting user_id to NULL.
  DROP TRIGGER audit_no_update;
  ALTER TABLE audit ADD COLUMN user_ref TEXT;
  CREATE INDEX audit_by_user ON audit(user_id) WHERE user_id IS NOT NULL;
  -- Signup tokens (--registration token): SHA-256 of the token only; used once, before expires_at.
  CREATE TABLE signup_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
  ) WITHOUT ROWID;
  `,
  `
  -- External crisis signals (POST /crisis), kept a week for the user's devices that are offline
  -- when one comes: the signal as forwarded (JSON: id, at, reason, sig), never clinical detail.
  CREATE TABLE crisis_signals (
    user_id     TEXT NOT NULL REFERENCES users(user_id),
    signal_id   TEXT NOT NULL,
    signal      TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, signal_id)
  ) WITHOUT ROWID;
  CREATE INDEX crisis_signals_by_time ON crisis_signals(user_id, received_at);
  `,
  `
  -- \`audit report\` reads a time window of the trail (sync operations are audited too, so it is
  -- long): by time, then seq, for keyset paging.
  CREATE INDEX audit_by_time ON audit(at, seq);
  `,
  `
  -- Users the operator deleted, by their keyed audit ref (never the id): their devices may not
  -- create them again. Cleared by importing the user.
  CREATE TABLE deleted_users (
    user_ref   TEXT PRIMARY KEY,
    deleted_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
];

/** The audit key (HMAC key of user refs), generated on first use and kept in meta. */
const auditKey = (db: Database.Database): Buffer => {
  db.prepare(`INSERT INTO meta (key, value) VALUES ('audit_key', ?) ON CONFLICT (key) DO NOTHING`).run(randomBytes(32).toString('hex'));
  return Buffer.from(db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'audit_key'`).get()!.value, 'hex');
};

const AUDIT_NO_UPDATE = `
  CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
  WHEN NOT (NEW.user_id IS NULL AND NEW.seq IS OLD.seq AND NEW.at IS OLD.at AND NEW.actor IS OLD.actor AND NEW.op IS OLD.op
    AND NEW.user_ref IS OLD.user_ref AND NEW.outcome IS OLD.outcome AND NEW.detail IS OLD.detail
    AND NEW.prev_hash IS OLD.prev_hash AND NEW.hash IS OLD.hash)
  BEGIN SELECT RAISE(ABORT, 'audit is append-only (only a deleted user''s id is erased)'); END;`;

/**
 * Re-links an audit trail written before user refs: checks the old chain, then writes every row
 * again with its user ref and a hash in the current format, chained from genesis. What the old
 * chain said is kept in meta (audit_legacy: rows, head hash, and the first broken seq if any), so
 * a trail damaged before the upgrade is not silently blessed.
 */
const AUDIT_REF_STEP = (db: Database.Database): void => {
  const key = auditKey(db);
  // A page at a time: a long trail is never held whole in memory.
  const page = db.prepare<[number], AuditRow>(`SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT 1000`);
  const update = db.prepare(`UPDATE audit SET user_ref = ?, prev_hash = ?, hash = ? WHERE seq = ?`);
  let legacyPrev = GENESIS_HASH;
  let brokenAt: number | null = null;
  let prevHash = GENESIS_HASH;
  let count = 0;
  for (let rows = page.all(0); rows.length > 0; rows = page.all(rows[rows.length - 1]!.seq)) {
    for (const row of rows) {
      count++;
      if (brokenAt === null) {
        const fields = { seq: row.seq, at: row.at, actor: row.actor, op: row.op, userId: row.user_id, userRef: null, outcome: row.outcome, detail: row.detail };
        if (row.seq !== count || row.prev_hash !== legacyPrev || hashLegacyAuditRow(row.prev_hash, fields) !== row.hash) brokenAt = row.seq;
        legacyPrev = row.hash;
      }
      const userRef = row.user_id === null ? null : auditUserRef(key, row.user_id);
      const hash = hashAuditRow(prevHash, { seq: row.seq, at: row.at, actor: row.actor, op: row.op, userRef, outcome: row.outcome, detail: row.detail });
      update.run(userRef, prevHash, hash, row.seq);
      prevHash = hash;
    }
  }
  db.prepare(`INSERT INTO meta (key, value) VALUES ('audit_legacy', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(
    JSON.stringify({ rows: count, head: legacyPrev, brokenAt }),
  );
  db.exec(AUDIT_NO_UPDATE);
};

/** Steps in code after a migration's SQL, in the same transaction, by migration index. */
const MIGRATION_STEPS: Readonly<Record<number, (db: Database.Database) => void>> = { 10: AUDIT_REF_STEP };

interface DeviceRow {
  device_id: string;
  user_id: string;
  device_key: Buffer;
  user_key: Buffer;
  /** The user's recovery key: part of the first device's certificate (issuer NULL). */
  user_recovery_key: Buffer | null;
  issuer: string | null;
  issued_at: number;
  cert_sig: Buffer;
  registered_at: number;
  revoked_at: number | null;
}

interface UserRecoveryRow {
  user_id: string;
  user_key: Buffer;
  recovery_key: Buffer | null;
  recovery_gen: number;
  escrow: Buffer | null;
  reset: string | null;
}

interface VouchRow {
  device_id: string;
  issuer: string;
  user_id: string;
  issued_at: number;
  sig: Buffer;
  user_key: Buffer;
  device_key: Buffer;
}

interface LogRow {
  seq: number;
  part_index?: number | null;
  part_count?: number | null;
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
    issuer: row.issuer as DeviceId | 'recovery' | null,
    issuedAt: row.issued_at,
    ...(row.issuer === null && row.user_recovery_key !== null ? { recoveryKey: toB64(row.user_recovery_key) } : {}),
    sig: toB64(row.cert_sig),
  },
});

const toUserRecovery = (row: UserRecoveryRow): UserRecovery | undefined =>
  row.recovery_key === null
    ? undefined
    : {
        userId: row.user_id as UserId,
        userKey: new Uint8Array(row.user_key),
        recoveryKey: new Uint8Array(row.recovery_key),
        gen: row.recovery_gen,
        escrow: row.escrow === null ? null : toB64(row.escrow),
        reset: row.reset === null ? null : RecoveryResetSchema.parse(JSON.parse(row.reset)),
      };

const toVouch = (row: VouchRow): DeviceCertificate => ({
  user: row.user_id as UserId,
  userKey: toB64(row.user_key),
  device: row.device_id as DeviceId,
  deviceKey: toB64(row.device_key),
  issuer: row.issuer as DeviceId,
  issuedAt: row.issued_at,
  sig: toB64(row.sig),
});

/**
 * Which devices revoking `target` takes with it: the live devices it registered, transitively,
 * that no device staying live still supports. A device is supported when its registering issuer
 * or one of its vouchers is supported; the devices outside the target's line (and `protect`,
 * the revoking device) are supported by definition. Support flows only from outside the line,
 * so devices a thief registered cannot keep each other alive by vouching for one another.
 */
const cascadeOf = (
  target: DeviceId,
  devices: readonly DeviceRow[],
  vouchers: ReadonlyMap<string, readonly string[]>,
  protect: DeviceId | undefined,
): DeviceId[] => {
  const children = new Map<string, string[]>();
  for (const d of devices) if (d.issuer !== null) children.set(d.issuer, [...(children.get(d.issuer) ?? []), d.device_id]);
  const live = new Set(devices.filter((d) => d.revoked_at === null).map((d) => d.device_id));
  // The target's line: everything registered from it, through revoked links too (bounded by the user's devices).
  const line = new Set<string>();
  const seen = new Set<string>([target]);
  const queue = [target as string];
  while (queue.length > 0) {
    for (const child of children.get(queue.shift()!) ?? []) {
      if (seen.has(child)) continue;
      seen.add(child);
      queue.push(child);
      if (live.has(child) && child !== protect) line.add(child);
    }
  }
  const supported = new Set([...live].filter((id) => id !== target && !line.has(id)));
  const issuerOf = new Map(devices.map((d) => [d.device_id, d.issuer]));
  for (let changed = true; changed; ) {
    changed = false;
    for (const id of line) {
      if (supported.has(id)) continue;
      const issuer = issuerOf.get(id);
      if ((issuer != null && supported.has(issuer)) || (vouchers.get(id) ?? []).some((v) => supported.has(v))) {
        supported.add(id);
        changed = true;
      }
    }
  }
  return [...line].filter((id) => !supported.has(id)) as DeviceId[];
};

/**
 * Signed records as stored: exactly the signed fields, in one order, so the rows a revocation
 * leaves for its target and its cascade hold the same text (listed once).
 */
const revocationJson = (r: Revocation): string => JSON.stringify({ user: r.user, device: r.device, issuer: r.issuer, at: r.at, sig: r.sig });
const resetJson = (r: RecoveryReset): string => JSON.stringify({ user: r.user, keep: r.keep, gen: r.gen, at: r.at, sig: r.sig });

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
    ...(row.part_index !== undefined && row.part_index !== null && row.part_count !== undefined && row.part_count !== null
      ? { part: { index: row.part_index, count: row.part_count } }
      : {}),
  },
});

interface SubscriptionRow {
  subscription_id: string;
  user_id: string;
  price_id: string | null;
  tier: string | null;
  status: string;
  event_at: number;
  updated_at: number;
}

interface GraceRow {
  user_id: string;
  paid_tier: string;
  started_at: number;
  ends_at: number;
  failures: number;
}

interface AuditRow {
  seq: number;
  at: number;
  actor: string;
  op: string;
  user_id: string | null;
  user_ref?: string | null;
  outcome: string;
  detail: string;
  prev_hash: string;
  hash: string;
}

const toSubscription = (row: SubscriptionRow): SubscriptionRecord => ({
  subscriptionId: row.subscription_id,
  userId: row.user_id as UserId,
  priceId: row.price_id,
  tier: row.tier as TierName | null,
  status: row.status,
  eventAt: row.event_at,
  updatedAt: row.updated_at,
});

const toGrace = (row: GraceRow): GraceRecord => ({
  userId: row.user_id as UserId,
  paidTier: row.paid_tier as TierName,
  startedAt: row.started_at,
  endsAt: row.ends_at,
  failures: row.failures,
});

const toAudit = (row: AuditRow): AuditRecord => ({
  seq: row.seq,
  at: row.at,
  actor: row.actor,
  op: row.op,
  userId: row.user_id as UserId | null,
  userRef: row.user_ref ?? null,
  outcome: row.outcome,
  detail: row.detail,
  prevHash: row.prev_hash,
  hash: row.hash,
});

/** The embedded relay store: one SQLite file in WAL mode. */
export const openSqliteStore = (options: SqliteStoreOptions): SqliteRelayStore => {
  if (!options.readonly) createPrivateFile(options.path);
  const db = options.readonly ? new Database(options.path, { readonly: true, fileMustExist: true }) : new Database(options.path);
  if (options.readonly) {
    checkSchema(db);
    db.pragma('busy_timeout = 5000');
  } else {
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${options.synchronous ?? 'FULL'}`);
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    // Deleted rows (a deleted user, pruned log entries) are overwritten with zeros, in the file
    // and in the WAL pages that carry the change, instead of lingering in free space.
    db.pragma('secure_delete = ON');
    migrate(db);
  }
  // A read-only store of a database that never audited has no key yet; it writes no rows either.
  const auditKeyOf = (() => {
    let key: Buffer | undefined;
    return () => (key ??= auditKey(db));
  })();

  const stmt = {
    device: db.prepare<[string], DeviceRow>(
      `SELECT d.*, u.user_key, u.recovery_key AS user_recovery_key FROM devices d JOIN users u USING (user_id) WHERE d.device_id = ?`,
    ),
    devicesOfUser: db.prepare<[string], DeviceRow>(
      `SELECT d.*, u.user_key, u.recovery_key AS user_recovery_key FROM devices d JOIN users u USING (user_id)
       WHERE d.user_id = ? ORDER BY d.registered_at, d.device_id`,
    ),
    user: db.prepare<[string], { user_key: Buffer }>(`SELECT user_key FROM users WHERE user_id = ?`),
    insertUser: db.prepare(`INSERT INTO users (user_id, user_key, created_at, recovery_key, escrow) VALUES (?, ?, ?, ?, ?)`),
    userRecovery: db.prepare<[string], UserRecoveryRow>(`SELECT user_id, user_key, recovery_key, recovery_gen, escrow, reset FROM users WHERE user_id = ?`),
    recoveryUser: db.prepare<[Uint8Array], UserRecoveryRow>(
      `SELECT user_id, user_key, recovery_key, recovery_gen, escrow, reset FROM users WHERE recovery_key = ?`,
    ),
    setReset: db.prepare(`UPDATE users SET recovery_gen = ?, reset = ?, reset_at = ? WHERE user_id = ?`),
    putRevocation: db.prepare(
      `INSERT INTO revocations (device_id, user_id, record, created_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (device_id) DO UPDATE SET record = excluded.record, created_at = excluded.created_at`,
    ),
    dropRevocation: db.prepare(`DELETE FROM revocations WHERE device_id = ? AND user_id = ?`),
    // A reset stands behind the devices revoked at or before it: those it kept were reinstated
    // (revoked_at NULL), and a device revoked again later has a later revoked_at.
    revocationRecords: db.prepare<[string], { record: string | null; reset: string | null }>(
      `SELECT r.record, CASE WHEN d.revoked_at <= u.reset_at THEN u.reset END AS reset
       FROM devices d JOIN users u USING (user_id) LEFT JOIN revocations r USING (device_id)
       WHERE d.device_id = ? AND d.revoked_at IS NOT NULL`,
    ),
    // A revocation kept for a target and its cascade is one record: listed once, at its newest.
    revocationsOfUser: db.prepare<[string, number], { record: string }>(
      `SELECT record FROM (
         SELECT record, max(created_at) AS at FROM revocations WHERE user_id = ? GROUP BY record ORDER BY at DESC, record DESC LIMIT ?
       ) ORDER BY at, record`,
    ),
    reinstate: db.prepare(`UPDATE devices SET revoked_at = NULL WHERE device_id = ? AND user_id = ?`),
    vouchesOfUser: db.prepare<[string], VouchRow>(
      `SELECT v.device_id, v.issuer, v.user_id, v.issued_at, v.sig, u.user_key, d.device_key
       FROM vouches v JOIN devices d USING (device_id) JOIN users u ON u.user_id = v.user_id WHERE v.user_id = ? ORDER BY v.device_id, v.issuer`,
    ),
    vouch: db.prepare<[string, string], { n: number }>(`SELECT 1 AS n FROM vouches WHERE device_id = ? AND issuer = ?`),
    countVouches: db.prepare<[string], { n: number }>(`SELECT count(*) AS n FROM vouches WHERE device_id = ?`),
    putVouch: db.prepare(
      `INSERT INTO vouches (device_id, issuer, user_id, issued_at, sig, created_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (device_id, issuer) DO UPDATE SET issued_at = excluded.issued_at, sig = excluded.sig, created_at = excluded.created_at`,
    ),
    countDevices: db.prepare<[string], { n: number; live: number }>(
      `SELECT count(*) AS n, count(*) FILTER (WHERE revoked_at IS NULL) AS live FROM devices WHERE user_id = ?`,
    ),
    insertDevice: db.prepare(
      `INSERT INTO devices (device_id, user_id, device_key, issuer, issued_at, cert_sig, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
    ),
    doc: db.prepare<[string, string], { head_seq: number }>(`SELECT head_seq FROM docs WHERE user_id = ? AND doc_id = ?`),
    insertDoc: db.prepare(`INSERT INTO docs (user_id, doc_id, head_seq, created_at) VALUES (?, ?, 0, ?)`),
    setHead: db.prepare(`UPDATE docs SET head_seq = ? WHERE user_id = ? AND doc_id = ?`),
    lastCounter: db.prepare<[string, string, string], { last_counter: number }>(
      `SELECT last_counter FROM doc_authors WHERE user_id = ? AND doc_id = ? AND device_id = ?`,
    ),
    setCounter: db.prepare(
      `INSERT INTO doc_authors (user_id, doc_id, device_id, last_counter) VALUES (?, ?, ?, ?)
       ON CONFLICT (user_id, doc_id, device_id) DO UPDATE SET last_counter = excluded.last_counter`,
    ),
    byAuthor: db.prepare<[string, string, string, number], { seq: number; sig: Buffer }>(
      `SELECT seq, sig FROM log WHERE user_id = ? AND doc_id = ? AND device_id = ? AND counter = ?`,
    ),
    insertLog: db.prepare(
      `INSERT INTO log (user_id, doc_id, seq, device_id, counter, kind, epoch, lane, nonce, ct, sig, received_at, part_index, part_count)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    // Pages are bounded by count and by ciphertext bytes (length() reads a blob's size from the
    // record header, not its content), so one page never holds more than `maxBytes` plus one entry.
    readLog: db.prepare<[string, string, number, number, number], LogRow>(
      `SELECT seq, device_id, counter, kind, epoch, lane, nonce, ct, sig, received_at, part_index, part_count FROM (
         SELECT *, sum(length(ct)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - length(ct) AS before
         FROM log WHERE user_id = ? AND doc_id = ? AND seq > ? ORDER BY seq LIMIT ?
       ) WHERE before < ? ORDER BY seq`,
    ),
    ping: db.prepare(`SELECT 1`),
    revoke: db.prepare(`UPDATE devices SET revoked_at = coalesce(revoked_at, ?) WHERE device_id = ? AND user_id = ?`),
    lastEpoch: db.prepare<[string], { epoch: number | null; n: number }>(`SELECT max(epoch) AS epoch, count(*) AS n FROM epochs WHERE user_id = ?`),
    putEpoch: db.prepare(`INSERT INTO epochs (user_id, epoch, record, created_at) VALUES (?, ?, ?, ?)`),
    epochs: db.prepare<[string, number], { record: string }>(
      `SELECT record FROM (SELECT epoch, record FROM epochs WHERE user_id = ? ORDER BY epoch DESC LIMIT ?) ORDER BY epoch`,
    ),
    snapshot: db.prepare<[string, string], LogRow & { base: number }>(
      `SELECT base, base AS seq, device_id, counter, 'snapshot' AS kind, epoch, lane, nonce, ct, sig, received_at FROM snapshots WHERE user_id = ? AND doc_id = ?`,
    ),
    snapshotBase: db.prepare<[string, string], { base: number }>(`SELECT base FROM snapshots WHERE user_id = ? AND doc_id = ?`),
    putSnapshot: db.prepare(
      `INSERT INTO snapshots (user_id, doc_id, base, device_id, counter, epoch, lane, nonce, ct, sig, received_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (user_id, doc_id) DO UPDATE SET base = excluded.base, device_id = excluded.device_id, counter = excluded.counter,
         epoch = excluded.epoch, lane = excluded.lane, nonce = excluded.nonce, ct = excluded.ct, sig = excluded.sig,
         received_at = excluded.received_at`,
    ),
    prune: db.prepare(`DELETE FROM log WHERE user_id = ? AND doc_id = ? AND seq <= ? AND received_at <= ?`),
    entitlement: db.prepare<[string], { tier: string; updated_at: number; source: string }>(
      `SELECT tier, updated_at, source FROM entitlements WHERE user_id = ?`,
    ),
    setEntitlement: db.prepare(
      `INSERT INTO entitlements (user_id, tier, updated_at, source) VALUES (?, ?, ?, ?)
       ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier, updated_at = excluded.updated_at, source = excluded.source`,
    ),
    paymentEvent: db.prepare<[string], { n: number }>(`SELECT 1 AS n FROM payment_events WHERE event_id = ?`),
    insertPaymentEvent: db.prepare(`INSERT INTO payment_events (event_id, type, outcome, received_at) VALUES (?, ?, ?, ?)`),
    subscription: db.prepare<[string], SubscriptionRow>(`SELECT * FROM subscriptions WHERE subscription_id = ?`),
    subscriptionsOfUser: db.prepare<[string], SubscriptionRow>(`SELECT * FROM subscriptions WHERE user_id = ? ORDER BY subscription_id`),
    setSubscription: db.prepare(
      `INSERT INTO subscriptions (subscription_id, user_id, price_id, tier, status, event_at, updated_at)
       VALUES (@subscriptionId, @userId, @priceId, @tier, @status, @eventAt, @updatedAt)
       ON CONFLICT (subscription_id) DO UPDATE SET user_id = excluded.user_id,
         price_id = excluded.price_id, tier = excluded.tier, status = excluded.status, event_at = excluded.event_at,
         updated_at = excluded.updated_at`,
    ),
    grace: db.prepare<[string], GraceRow>(`SELECT * FROM grace_periods WHERE user_id = ?`),
    graces: db.prepare<[], GraceRow>(`SELECT * FROM grace_periods ORDER BY ends_at, user_id`),
    setGrace: db.prepare(
      `INSERT INTO grace_periods (user_id, paid_tier, started_at, ends_at, failures) VALUES (@userId, @paidTier, @startedAt, @endsAt, @failures)
       ON CONFLICT (user_id) DO UPDATE SET paid_tier = excluded.paid_tier, started_at = excluded.started_at,
         ends_at = excluded.ends_at, failures = excluded.failures`,
    ),
    clearGrace: db.prepare(`DELETE FROM grace_periods WHERE user_id = ?`),
    insertFailure: db.prepare(`INSERT INTO payment_failures (user_id, at) VALUES (?, ?)`),
    forgetFailures: db.prepare(`DELETE FROM payment_failures WHERE user_id = ? AND at < ?`),
    countFailures: db.prepare<[string, number], { n: number }>(`SELECT count(*) AS n FROM payment_failures WHERE user_id = ? AND at >= ?`),
    lastAudit: db.prepare<[], { seq: number; hash: string }>(`SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1`),
    insertAudit: db.prepare(
      `INSERT INTO audit (seq, at, actor, op, user_id, user_ref, outcome, detail, prev_hash, hash)
       VALUES (@seq, @at, @actor, @op, @userId, @userRef, @outcome, @detail, @prevHash, @hash)`,
    ),
    readAudit: db.prepare<[number, number], AuditRow>(`SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`),
    readAuditWindow: db.prepare<[number, number, number, number, number], AuditRow>(
      `SELECT * FROM audit WHERE (at, seq) > (?, ?) AND at >= ? AND at < ? ORDER BY at, seq LIMIT ?`,
    ),
    hasUser: db.prepare<[string], { n: number }>(`SELECT 1 AS n FROM users WHERE user_id = ?`),
    putSignupToken: db.prepare(`INSERT INTO signup_tokens (token_hash, created_at, expires_at) VALUES (?, ?, ?)`),
    signupToken: db.prepare<[string], { expires_at: number; used_at: number | null }>(`SELECT expires_at, used_at FROM signup_tokens WHERE token_hash = ?`),
    useSignupToken: db.prepare(`UPDATE signup_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?`),
    usage: db.prepare<[string, string], { bytes: number }>(`SELECT bytes FROM usage WHERE user_id = ? AND day = ?`),
    insertCrisisSignal: db.prepare(`INSERT OR IGNORE INTO crisis_signals (user_id, signal_id, signal, received_at) VALUES (?, ?, ?, ?)`),
    expireCrisisSignals: db.prepare(`DELETE FROM crisis_signals WHERE user_id = ? AND received_at < ?`),
    pruneCrisisSignals: db.prepare(
      `DELETE FROM crisis_signals WHERE user_id = ? AND signal_id NOT IN
         (SELECT signal_id FROM crisis_signals WHERE user_id = ? ORDER BY received_at DESC, signal_id DESC LIMIT ?)`,
    ),
    isDeletedUser: db.prepare<[string], { n: number }>(`SELECT 1 AS n FROM deleted_users WHERE user_ref = ?`),
    crisisSignals: db.prepare<[string, number], { signal: string }>(`SELECT signal FROM crisis_signals WHERE user_id = ? AND received_at >= ? ORDER BY received_at, signal_id`),
    addUsage: db.prepare(
      `INSERT INTO usage (user_id, day, bytes) VALUES (?, ?, ?)
       ON CONFLICT (user_id, day) DO UPDATE SET bytes = bytes + excluded.bytes`,
    ),
  };

  const registerTx = db.transaction(
    (cert: DeviceCertificate, publicKey: Uint8Array, userKey: Uint8Array, now: number, limits: DeviceLimits, escrow: string | undefined): Result<DeviceRecord> => {
      const existing = stmt.device.get(cert.device);
      if (existing) {
        if (existing.user_id !== cert.user) return err(ErrorCode.BAD_CERTIFICATE, 'device is registered to another user');
        return ok(toDeviceRecord(existing));
      }
      if (cert.issuer === 'recovery') {
        // Checked again inside the transaction; the caller verified the signature with this key.
        const recovery = stmt.userRecovery.get(cert.user);
        if (!recovery?.recovery_key) return err(ErrorCode.RECOVERY_UNKNOWN, 'this user has no recovery key');
      } else if (cert.issuer !== null) {
        // Checked again inside the transaction: the issuer may have been revoked since hello.
        const issuer = stmt.device.get(cert.issuer);
        if (!issuer || issuer.user_id !== cert.user || issuer.revoked_at !== null) {
          return err(ErrorCode.BAD_CERTIFICATE, 'certificate issuer is not a live device of this user');
        }
      }
      const user = stmt.user.get(cert.user);
      if (!user) {
        if (cert.issuer !== null) return err(ErrorCode.BAD_CERTIFICATE, 'unknown user: the first device must be certified by the user key');
        const recoveryKey = cert.recoveryKey === undefined ? null : fromB64(cert.recoveryKey);
        if (recoveryKey && stmt.recoveryUser.get(recoveryKey)) return err(ErrorCode.BAD_CERTIFICATE, 'this recovery key belongs to another user');
        stmt.insertUser.run(cert.user, userKey, now, recoveryKey, escrow === undefined ? null : fromB64(escrow));
      } else {
        const count = stmt.countDevices.get(cert.user)!;
        if (cert.issuer === null && count.n > 0) {
          return err(ErrorCode.BAD_CERTIFICATE, 'this user has devices: a new device must be certified by one of them');
        }
        if (count.live >= limits.maxLive) return err(ErrorCode.LIMIT_EXCEEDED, `this user has ${count.live} devices, the most this relay keeps`);
        if (count.n >= limits.maxTotal) return err(ErrorCode.LIMIT_EXCEEDED, `this user registered ${count.n} devices, the most this relay keeps`);
      }
      stmt.insertDevice.run(cert.device, cert.user, publicKey, cert.issuer, cert.issuedAt, fromB64(cert.sig), now);
      return ok(toDeviceRecord(stmt.device.get(cert.device)!));
    },
  );

  const appendOne = (req: AppendRequest, now: number): AppendOutcome => {
    const { env, userId } = req;
    let doc = stmt.doc.get(userId, env.doc);
    const last = stmt.lastCounter.get(userId, env.doc, env.device)?.last_counter ?? 0;
    if (env.counter <= last) {
      const prior = stmt.byAuthor.get(userId, env.doc, env.device, env.counter);
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
      stmt.insertDoc.run(userId, env.doc, now);
      doc = { head_seq: 0 };
    }
    const seq = doc.head_seq + 1;
    stmt.insertLog.run(
      userId,
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
      env.part?.index ?? null,
      env.part?.count ?? null,
    );
    stmt.setHead.run(seq, userId, env.doc);
    stmt.setCounter.run(userId, env.doc, env.device, env.counter);
    if (req.meter) stmt.addUsage.run(userId, req.meter.day, req.meter.bytes);
    return { status: 'stored', seq: seq as Seq };
  };

  const putSnapshotTx = db.transaction((req: AppendRequest, now: number, retentionMs: number): SnapshotOutcome => {
    const { env, userId } = req;
    const base = env.base ?? 0;
    const doc = stmt.doc.get(userId, env.doc);
    if (!doc) return { status: 'rejected', error: { code: ErrorCode.SNAPSHOT_REFUSED, message: 'no log to snapshot' } };
    if (base > doc.head_seq) {
      return { status: 'rejected', error: { code: ErrorCode.SNAPSHOT_REFUSED, message: `snapshot covers seq ${base}, the log ends at ${doc.head_seq}` } };
    }
    const current = stmt.snapshotBase.get(userId, env.doc);
    if (current && current.base >= base) {
      return { status: 'rejected', error: { code: ErrorCode.SNAPSHOT_REFUSED, message: `a snapshot up to seq ${current.base} is already kept` } };
    }
    stmt.putSnapshot.run(userId, env.doc, base, env.device, env.counter, env.epoch, env.lane, fromB64(env.nonce), fromB64(env.ct), fromB64(env.sig), now);
    // Entries newer than the retention window stay so a device slightly behind catches up entry by entry.
    const pruned = stmt.prune.run(userId, env.doc, base, now - retentionMs).changes;
    return { status: 'stored', seq: base as Seq, pruned };
  });

  const putEpochTx = db.transaction((record: EpochRecord, now: number, maxEpochs: number): Result<EpochRecord> => {
    const stored = stmt.lastEpoch.get(record.user);
    const last = stored?.epoch ?? 0;
    if (record.epoch !== last + 1) return err(ErrorCode.UNKNOWN_EPOCH, `the next key epoch is ${last + 1}, not ${record.epoch}`);
    if ((stored?.n ?? 0) >= maxEpochs) return err(ErrorCode.LIMIT_EXCEEDED, `this user has ${stored?.n} key epochs, the most this relay keeps`);
    stmt.putEpoch.run(record.user, record.epoch, JSON.stringify(record), now);
    return ok(record);
  });

  const appendTx = db.transaction((batch: readonly AppendRequest[], now: number) => batch.map((req) => appendOne(req, now)));

  const vouchersOf = (userId: string): Map<string, string[]> => {
    const vouchers = new Map<string, string[]>();
    for (const v of stmt.vouchesOfUser.all(userId)) vouchers.set(v.device_id, [...(vouchers.get(v.device_id) ?? []), v.issuer]);
    return vouchers;
  };

  const revokeTx = db.transaction((revocation: Revocation, now: number): Result<DeviceRecord[]> => {
    const { user: userId, device: deviceId, issuer: by } = revocation;
    const target = stmt.device.get(deviceId);
    if (!target || target.user_id !== userId) return err(ErrorCode.UNKNOWN_DEVICE, 'no such device of this user');
    // A revoked device's frames may still be queued: it revokes nothing once it is out.
    const actor = stmt.device.get(by);
    if (!actor || actor.user_id !== userId || actor.revoked_at !== null) return err(ErrorCode.DEVICE_REVOKED, 'the revoking device is revoked');
    const cascade = cascadeOf(deviceId, stmt.devicesOfUser.all(userId), vouchersOf(userId), by);
    const record = revocationJson(revocation);
    for (const id of [deviceId, ...cascade]) {
      stmt.revoke.run(now, id, userId);
      stmt.putRevocation.run(id, userId, record, now);
    }
    return ok([deviceId, ...cascade].map((id) => toDeviceRecord(stmt.device.get(id)!)));
  });

  const resetTx = db.transaction((reset: RecoveryReset, enrol: RecoveryEnrolment | undefined, now: number, limits: DeviceLimits): Result<ResetOutcome> => {
    const user = stmt.userRecovery.get(reset.user);
    if (!user?.recovery_key) return err(ErrorCode.RECOVERY_UNKNOWN, 'this user has no recovery key');
    if (reset.gen !== user.recovery_gen + 1) {
      return err(ErrorCode.RECOVERY_REPLAYED, `the next reset of this user is generation ${user.recovery_gen + 1}, not ${reset.gen}`);
    }
    // Every check before the first write: returning a refusal still commits the transaction.
    if (reset.keep.length > limits.maxLive) return err(ErrorCode.LIMIT_EXCEEDED, `a user keeps at most ${limits.maxLive} devices`);
    const existing = enrol ? stmt.device.get(enrol.cert.device) : undefined;
    if (enrol) {
      const { cert } = enrol;
      if (cert.user !== reset.user || cert.issuer !== 'recovery' || !reset.keep.includes(cert.device)) {
        return err(ErrorCode.RECOVERY_INVALID, 'a reset enrols only a recovery-certified device it keeps');
      }
      if (existing && existing.user_id !== reset.user) return err(ErrorCode.BAD_CERTIFICATE, 'device is registered to another user');
      if (!existing) {
        const count = stmt.countDevices.get(reset.user)!;
        if (count.n >= limits.maxTotal) return err(ErrorCode.LIMIT_EXCEEDED, `this user registered ${count.n} devices, the most this relay keeps`);
      }
    }
    for (const id of reset.keep) {
      if (enrol && !existing && id === enrol.cert.device) continue;
      const row = stmt.device.get(id);
      if (!row || row.user_id !== reset.user) return err(ErrorCode.RECOVERY_INVALID, `the reset keeps ${id}, which is not a device of this user`);
    }
    let enrolled: DeviceRecord | undefined;
    if (enrol && !existing) {
      const { cert } = enrol;
      stmt.insertDevice.run(cert.device, cert.user, enrol.publicKey, cert.issuer, cert.issuedAt, fromB64(cert.sig), now);
      enrolled = toDeviceRecord(stmt.device.get(cert.device)!);
    }
    const keep = new Set<string>(reset.keep);
    const revoked: DeviceRecord[] = [];
    for (const row of stmt.devicesOfUser.all(reset.user)) {
      if (keep.has(row.device_id)) {
        if (row.revoked_at !== null) {
          stmt.reinstate.run(row.device_id, reset.user);
          // What revoked it no longer stands: the reset, later in the book of every device, keeps it.
          stmt.dropRevocation.run(row.device_id, reset.user);
        }
      } else if (row.revoked_at === null) {
        stmt.revoke.run(now, row.device_id, reset.user);
        revoked.push(toDeviceRecord(stmt.device.get(row.device_id)!));
      }
    }
    stmt.setReset.run(reset.gen, resetJson(reset), now, reset.user);
    const kept = reset.keep.map((id) => toDeviceRecord(stmt.device.get(id)!));
    return ok({ revoked, kept, ...(enrolled ? { enrolled } : {}) });
  });

  const vouchTx = db.transaction((cert: DeviceCertificate, now: number, maxPerDevice: number): Result<DeviceCertificate> => {
    if (cert.issuer === null || cert.issuer === 'recovery') return err(ErrorCode.BAD_CERTIFICATE, 'a vouch is signed by a device');
    const device = stmt.device.get(cert.device);
    if (!device || device.user_id !== cert.user) return err(ErrorCode.UNKNOWN_DEVICE, 'a vouch is for a registered device of the same user');
    if (device.revoked_at !== null) return err(ErrorCode.DEVICE_REVOKED, 'the device vouched for is revoked');
    if (!bytesEqual(device.device_key, fromB64(cert.deviceKey))) return err(ErrorCode.BAD_CERTIFICATE, 'the vouch names another key for this device');
    const issuer = stmt.device.get(cert.issuer);
    if (!issuer || issuer.user_id !== cert.user || issuer.revoked_at !== null) {
      return err(ErrorCode.BAD_CERTIFICATE, 'a vouch is signed by a live device of the same user');
    }
    if (!stmt.vouch.get(cert.device, cert.issuer) && stmt.countVouches.get(cert.device)!.n >= maxPerDevice) {
      return err(ErrorCode.LIMIT_EXCEEDED, `this device has ${maxPerDevice} vouches, the most this relay keeps`);
    }
    stmt.putVouch.run(cert.device, cert.issuer, cert.user, cert.issuedAt, fromB64(cert.sig), now);
    return ok(cert);
  });

  /** Device and document ids as keyed refs, under the same key as user refs. */
  const refsOf = (refs: Readonly<Record<string, string>>): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const [key, id] of Object.entries(refs)) out[key] = auditUserRef(auditKeyOf(), id);
    return out;
  };

  const appendAuditRows = (drafts: readonly AuditDraft[], now: number): AuditRecord[] => {
    const last = stmt.lastAudit.get();
    let seq = last?.seq ?? 0;
    let prevHash = last?.hash ?? GENESIS_HASH;
    return drafts.map((draft) => {
      seq++;
      const userRef = draft.userId === null ? null : auditUserRef(auditKeyOf(), draft.userId);
      const detail = draft.refs === undefined ? draft.detail : { ...draft.detail, ...refsOf(draft.refs) };
      const at = draft.at === undefined ? now : Math.min(draft.at, now);
      const fields = { seq, at, actor: draft.actor, op: draft.op, userRef, outcome: draft.outcome, detail: canonicalDetail(detail) };
      const userId = draft.eraseUserId ? null : draft.userId;
      const record: AuditRecord = { ...fields, userId, prevHash, hash: hashAuditRow(prevHash, fields) };
      stmt.insertAudit.run(record);
      prevHash = record.hash;
      return record;
    });
  };

  /** One payment change; the event id's primary key makes a second application fail whole. */
  const writePayment = (write: PaymentWrite, now: number): void => {
    if (write.event) {
      if (stmt.paymentEvent.get(write.event.id)) throw new Error(`payment event ${write.event.id} was already applied`);
      stmt.insertPaymentEvent.run(write.event.id, write.event.type, write.event.outcome, now);
    }
    if (write.subscription) stmt.setSubscription.run(write.subscription);
    if (write.grace) {
      if ('set' in write.grace) stmt.setGrace.run(write.grace.set);
      else stmt.clearGrace.run(write.grace.clear);
    }
    if (write.failure) {
      stmt.insertFailure.run(write.failure.userId, write.failure.at);
      if (write.failure.forgetBefore !== undefined) stmt.forgetFailures.run(write.failure.userId, write.failure.forgetBefore);
    }
    if (write.audit) appendAuditRows(write.audit, now);
  };

  const entitlementTx = db.transaction((userId: UserId, tier: TierName, now: number, source: string, also: PaymentWrite | undefined) => {
    stmt.setEntitlement.run(userId, tier, now, source);
    if (also) writePayment(also, now);
  });
  const paymentTx = db.transaction(writePayment);
  const auditTx = db.transaction(appendAuditRows);

  const useSignupTokenTx = db.transaction((tokenHash: string, now: number): SignupTokenOutcome => {
    if (stmt.useSignupToken.run(now, tokenHash, now).changes === 1) return 'accepted';
    const row = stmt.signupToken.get(tokenHash);
    if (!row) return 'unknown';
    return row.used_at !== null ? 'used' : 'expired';
  });

  const keepCrisisSignalTx = db.transaction((userId: UserId, signal: CrisisSignal, now: number, limits: CrisisSignalLimits): 'stored' | 'duplicate' => {
    stmt.expireCrisisSignals.run(userId, now - limits.retentionMs);
    if (stmt.insertCrisisSignal.run(userId, signal.id, JSON.stringify(signal), now).changes === 0) return 'duplicate';
    stmt.pruneCrisisSignals.run(userId, userId, limits.maxPerUser);
    return 'stored';
  });

  const admin = createUserDataOps(db, { appendAudit: (drafts, now) => appendAuditRows(drafts, now), userRef: (userId) => auditUserRef(auditKeyOf(), userId) });

  let closed = false;
  return {
    getDevice: async (deviceId) => {
      const row = stmt.device.get(deviceId);
      return row && toDeviceRecord(row);
    },
    listDevices: async (userId) => stmt.devicesOfUser.all(userId).map(toDeviceRecord),
    registerDevice: async (cert, publicKey, userKey, now, limits, escrow) => registerTx.immediate(cert, publicKey, userKey, now, limits, escrow),
    append: async (batch, now) => (batch.length === 0 ? [] : appendTx.immediate(batch, now)),
    readLog: async (userId, docId, after, limit, maxBytes = Number.MAX_SAFE_INTEGER) =>
      stmt.readLog.all(userId, docId, after, limit, maxBytes).map((row) => toLogEntry(docId, row)),
    lastCounter: async (userId, docId, deviceId) => stmt.lastCounter.get(userId, docId, deviceId)?.last_counter ?? 0,
    putSnapshot: async (req, now, retentionMs) => putSnapshotTx.immediate(req, now, retentionMs),
    revokeDevice: async (revocation, now) => revokeTx.immediate(revocation, now),
    revocationRecords: async (deviceId) => {
      const row = stmt.revocationRecords.get(deviceId);
      if (!row) return {};
      const reset = row.reset === null ? undefined : RecoveryResetSchema.parse(JSON.parse(row.reset));
      return {
        ...(row.record !== null ? { revocation: RevocationSchema.parse(JSON.parse(row.record)) } : {}),
        // Never a reset that keeps the device (a safeguard: it would be reinstated, not revoked).
        ...(reset && !reset.keep.includes(deviceId) ? { reset } : {}),
      };
    },
    listRevocations: async (userId, limit) => stmt.revocationsOfUser.all(userId, limit).map((row) => RevocationSchema.parse(JSON.parse(row.record))),
    getRecovery: async (userId) => {
      const row = stmt.userRecovery.get(userId);
      return row && toUserRecovery(row);
    },
    findRecoveryUser: async (recoveryKey) => {
      const row = stmt.recoveryUser.get(recoveryKey);
      return row && toUserRecovery(row);
    },
    applyRecoveryReset: async (reset, enrol, now, limits) => resetTx.immediate(reset, enrol, now, limits),
    putVouch: async (cert, now, maxPerDevice) => vouchTx.immediate(cert, now, maxPerDevice),
    listVouches: async (userId) => stmt.vouchesOfUser.all(userId).map(toVouch),
    putEpoch: async (record, now, maxEpochs) => putEpochTx.immediate(record, now, maxEpochs),
    listEpochs: async (userId, limit) => stmt.epochs.all(userId, limit).map((row) => EpochRecordSchema.parse(JSON.parse(row.record))),
    getSnapshot: async (userId, docId) => {
      const row = stmt.snapshot.get(userId, docId);
      if (!row) return undefined;
      const entry = toLogEntry(docId, row);
      return { env: { ...entry.env, base: row.base as Seq }, receivedAt: row.received_at };
    },
    snapshotBase: async (userId, docId) => (stmt.snapshotBase.get(userId, docId)?.base ?? 0) as Seq,
    headSeq: async (userId, docId) => (stmt.doc.get(userId, docId)?.head_seq ?? 0) as Seq,
    getEntitlement: async (userId) => {
      const row = stmt.entitlement.get(userId);
      return row && { userId, tier: row.tier as TierName, updatedAt: row.updated_at, source: row.source };
    },
    setEntitlement: async (userId, tier, now, source, also) => {
      entitlementTx.immediate(userId, tier, now, source, also);
      return { userId, tier, updatedAt: now, source };
    },
    commitPayment: async (write, now) => {
      paymentTx.immediate(write, now);
    },
    paymentEventSeen: async (eventId) => stmt.paymentEvent.get(eventId) !== undefined,
    getSubscription: async (subscriptionId) => {
      const row = stmt.subscription.get(subscriptionId);
      return row && toSubscription(row);
    },
    listSubscriptions: async (userId) => stmt.subscriptionsOfUser.all(userId).map(toSubscription),
    getGrace: async (userId) => {
      const row = stmt.grace.get(userId);
      return row && toGrace(row);
    },
    listGraces: async () => stmt.graces.all().map(toGrace),
    countPaymentFailures: async (userId, since) => stmt.countFailures.get(userId, since)?.n ?? 0,
    appendAudit: async (drafts, now) => (drafts.length === 0 ? [] : auditTx.immediate(drafts, now)),
    readAudit: async (after, limit) => stmt.readAudit.all(after, limit).map(toAudit),
    readAuditWindow: async (from, to, after, limit) => stmt.readAuditWindow.all(after?.at ?? from, after?.seq ?? -1, from, to, limit).map(toAudit),
    hasUser: async (userId) => stmt.hasUser.get(userId) !== undefined,
    isDeletedUser: async (userId) => stmt.isDeletedUser.get(auditUserRef(auditKeyOf(), userId)) !== undefined,
    putSignupToken: async (tokenHash, expiresAt, now) => {
      stmt.putSignupToken.run(tokenHash, now, expiresAt);
    },
    useSignupToken: async (tokenHash, now) => useSignupTokenTx.immediate(tokenHash, now),
    keepCrisisSignal: async (userId, signal, now, limits) => keepCrisisSignalTx.immediate(userId, signal, now, limits),
    crisisSignals: async (userId, since) => {
      const kept: CrisisSignal[] = [];
      for (const row of stmt.crisisSignals.all(userId, since)) {
        // Written by this relay from a validated signal; one that no longer parses is skipped, never sent.
        const parsed = CrisisSignalSchema.safeParse(JSON.parse(row.signal));
        if (parsed.success) kept.push(parsed.data);
      }
      return kept;
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
    relayId: async (candidate) => keepRelayId(db, candidate),
    ...admin,
  };
};

/**
 * Creates the database file readable by its owner only (0600) before SQLite opens it; SQLite
 * gives the -wal and -shm files it creates later the mode of the database file, so they are
 * private too. An existing file (and its -wal, -shm) is set to 0600.
 */
const createPrivateFile = (path: string): void => {
  if (path === ':memory:' || path === '' || path.startsWith('file:')) return;
  if (!existsSync(path)) {
    closeSync(openSync(path, 'a', 0o600));
    // openSync's mode passes through the umask, which can only narrow it; chmod makes it exact.
    chmodSync(path, 0o600);
    return;
  }
  for (const file of [path, `${path}-wal`, `${path}-shm`]) {
    try {
      chmodSync(file, 0o600);
    } catch {
      // Not ours to change (another owner) or absent: SQLite reports what matters when it opens.
    }
  }
};

const schemaVersion = (db: Database.Database): number => {
  const row = db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'schema_version'`).get();
  return row ? Number(row.value) : 0;
};

/** A read-only store cannot migrate: it opens only a database this relay version wrote. */
const checkSchema = (db: Database.Database): void => {
  const hasMeta = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'`).get() !== undefined;
  const current = hasMeta ? schemaVersion(db) : 0;
  if (current !== MIGRATIONS.length) {
    db.close();
    throw new Error(`database schema version ${current} is not this relay's (${MIGRATIONS.length}): not a Keel relay database, or start the relay once to migrate it`);
  }
};

/** The relay id in `meta`: the first one written wins, so racing first starts agree on one id. */
const keepRelayId = (db: Database.Database, candidate: string): string =>
  db.transaction(() => {
    db.prepare(`INSERT INTO meta (key, value) VALUES ('relay_id', ?) ON CONFLICT (key) DO NOTHING`).run(candidate);
    return db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'relay_id'`).get()!.value;
  }).immediate();

const migrate = (db: Database.Database): void => {
  db.exec(`CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
  const current = schemaVersion(db);
  if (current > MIGRATIONS.length) {
    throw new Error(`database schema version ${current} is newer than this relay (${MIGRATIONS.length}); upgrade the relay`);
  }
  for (let version = current; version < MIGRATIONS.length; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version]!);
      MIGRATION_STEPS[version]?.(db);
      db.prepare(`INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(
        String(version + 1),
      );
    }).immediate();
  }
};

