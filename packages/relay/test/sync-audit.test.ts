import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DeviceId, DocId, Seq, UserId } from '@keel/engine';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { auditUserRef, verifyAuditRows } from '../src/audit/audit-chain.js';
import { createRelayEvents } from '../src/events/relay-events.js';
import type { LogFields, LogLevel } from '../src/log.js';
import { SyncAuditOp, createSyncAudit } from '../src/observe/sync-audit.js';
import type { AuditDraft } from '../src/storage/relay-store.js';
import { type SqliteRelayStore, openSqliteStore } from '../src/storage/sqlite-store.js';
import { RelayConfigSchema } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { startRelay } from '../src/server/relay-server.js';
import { createFakeClock } from './fake-clock.js';

const T0 = 1_770_000_000_000;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const id = (prefix: string) => `${prefix}${randomBytes(24).toString('base64url')}`;
const user = () => id('u_') as UserId;
const device = () => id('d_') as DeviceId;
const doc = () => id('doc_') as DocId;

/** A real store in a temp dir, a bus, a fake clock and the listener under test (closed, then the store, after the test). */
const setup = (options: { maxRows?: number; batchRows?: number; maxCounters?: number; failing?: () => boolean } = {}) => {
  const dir = mkdtempSync(join(tmpdir(), 'keel-sync-audit-'));
  const path = join(dir, 'relay.db');
  const store: SqliteRelayStore = openSqliteStore({ path });
  const clock = createFakeClock(T0);
  const lines: { level: LogLevel; msg: string; fields?: LogFields | undefined }[] = [];
  const log = { log: (level: LogLevel, msg: string, fields?: LogFields) => void lines.push({ level, msg, fields }) };
  const events = createRelayEvents({ log, now: clock.now });
  const appends: number[] = [];
  // The real store; `failing` makes its appends fail the way a full disk would, to test the bound.
  const target = {
    appendAudit: async (drafts: readonly AuditDraft[], now: number) => {
      if (options.failing?.()) throw new Error('SQLITE_FULL: database or disk is full');
      appends.push(drafts.length);
      return store.appendAudit(drafts, now);
    },
  };
  const audit = createSyncAudit({ events, store: target, log, timers: clock.timers, ...options });
  let closed = false;
  cleanups.push(async () => {
    if (!closed) await audit.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const rows = async () => {
    const all = [];
    for (let page = await store.readAudit(0, 1000); page.length > 0; page = await store.readAudit(page.at(-1)!.seq, 1000)) all.push(...page);
    return all;
  };
  const close = async () => {
    closed = true;
    await audit.close();
  };
  return { store, path, clock, events, audit, rows, appends, lines, close };
};

const commit = (u: UserId, d: DeviceId, c: DocId, lane = 4) => ({ user: u, device: d, doc: c, lane, envelopes: 1, bytes: 100, latencyMs: 12.4, tier: 'basic' as const });

describe('sync audit listener', () => {
  it('writes rows in one batch after 250 ms, keeping each event time, and never during the emit', async () => {
    const t = setup();
    const [u, d, c] = [user(), device(), doc()];
    for (let i = 0; i < 10; i++) {
      t.events.emit('committed', commit(u, d, c));
      await t.clock.advance(10);
    }
    expect(await t.rows()).toHaveLength(0);
    expect(t.audit.pending()).toBe(10);
    // The timer was set by the first row (at T0): due at T0 + 250.
    await t.clock.advance(149);
    expect(await t.rows()).toHaveLength(0);
    await t.clock.advance(1);
    const rows = await t.rows();
    expect(rows).toHaveLength(10);
    expect(t.appends).toEqual([10]);
    expect(rows.map((r) => r.at)).toEqual(Array.from({ length: 10 }, (_, i) => T0 + i * 10));
    expect(rows.every((r) => r.op === SyncAuditOp.commit && r.outcome === 'committed' && r.actor === 'device')).toBe(true);
    expect(JSON.parse(rows[0]!.detail)).toMatchObject({ lane: 4, envelopes: 1, bytes: 100, latencyMs: 12, tier: 'basic' });
    expect(verifyAuditRows(rows).ok).toBe(true);
    expect(t.audit.pending()).toBe(0);
  });

  it('writes 512 rows on the next turn without waiting for the timer', async () => {
    const t = setup();
    const [u, d, c] = [user(), device(), doc()];
    for (let i = 0; i < 511; i++) t.events.emit('committed', commit(u, d, c));
    await t.clock.advance(0);
    expect(await t.rows()).toHaveLength(0);
    t.events.emit('committed', commit(u, d, c));
    expect(await t.rows()).toHaveLength(0);
    await t.clock.advance(0);
    expect(await t.rows()).toHaveLength(512);
    expect(t.appends).toEqual([512]);
  });

  it('at the bound writes in the emitting call; when the store refuses, drops the oldest past the bound, logs it and records the gap', async () => {
    let failing = false;
    const t = setup({ maxRows: 100, batchRows: 1_000, failing: () => failing });
    const [u, d, c] = [user(), device(), doc()];
    for (let i = 0; i < 100; i++) t.events.emit('committed', commit(u, d, c, 4));
    // No timer ran: the 100th row wrote the queue in the emit itself.
    expect(t.appends).toEqual([100]);
    expect(await t.rows()).toHaveLength(100);

    failing = true;
    for (let i = 0; i < 150; i++) t.events.emit('committed', commit(u, d, c, 5));
    await t.clock.advance(0);
    // Failed writes gave their rows back; what did not fit under 100 was dropped, oldest first.
    expect(t.audit.pending()).toBeLessThanOrEqual(100);
    expect(t.audit.dropped()).toBe(50);
    expect(t.lines.some((l) => l.level === 'error' && l.msg.startsWith('audit rows dropped') && l.fields?.total === 50)).toBe(true);

    failing = false;
    await t.clock.advance(250);
    const rows = await t.rows();
    expect(rows.filter((r) => JSON.parse(r.detail).lane === 5)).toHaveLength(100);
    const gap = rows.find((r) => r.op === SyncAuditOp.dropped)!;
    expect(JSON.parse(gap.detail)).toEqual({ count: 50 });
    expect(verifyAuditRows(rows).ok).toBe(true);
  });

  it('counts auth failures, bad frames, refused envelopes and pairing steps per code in a window: a flood is a few rows', async () => {
    const t = setup();
    const [u, d] = [user(), device()];
    for (let i = 0; i < 5_000; i++) t.events.emit('authFailed', { code: 'AUTH_FAILED' });
    t.events.emit('authFailed', { code: 'UNKNOWN_DEVICE' });
    for (let i = 0; i < 300; i++) t.events.emit('refused', { user: u, device: d, code: 'BAD_FRAME', frame: 'unknown', kind: 'bad-frame' });
    for (let i = 0; i < 400; i++) t.events.emit('refused', { user: u, device: d, code: 'BAD_SIGNATURE', frame: 'push', kind: 'rejected' });
    for (let i = 0; i < 7; i++) t.events.emit('pairing', { outcome: 'refused', code: 'PAIRING_UNKNOWN' });
    t.events.emit('pairing', { outcome: 'opened' });
    await t.clock.advance(250);
    const rows = await t.rows();
    expect(rows.map((r) => [r.op, r.outcome, JSON.parse(r.detail).count])).toEqual([
      [SyncAuditOp.authFailed, 'AUTH_FAILED', 5_000],
      [SyncAuditOp.authFailed, 'UNKNOWN_DEVICE', 1],
      [SyncAuditOp.badFrames, 'BAD_FRAME', 300],
      [SyncAuditOp.refused, 'BAD_SIGNATURE', 400],
      [SyncAuditOp.pairing, 'refused', 7],
      [SyncAuditOp.pairing, 'opened', 1],
    ]);
    // The next window counts afresh.
    t.events.emit('authFailed', { code: 'AUTH_FAILED' });
    await t.clock.advance(250);
    expect(JSON.parse((await t.rows()).at(-1)!.detail).count).toBe(1);
  });

  it('writes at once when the distinct counters reach their bound', async () => {
    const t = setup({ maxCounters: 50 });
    for (let i = 0; i < 49; i++) t.events.emit('refused', { device: device(), code: 'BAD_FRAME', frame: 'unknown', kind: 'bad-frame' });
    expect(t.appends).toEqual([]);
    t.events.emit('refused', { device: device(), code: 'BAD_FRAME', frame: 'unknown', kind: 'bad-frame' });
    expect(t.appends).toEqual([50]);
    expect(t.audit.pending()).toBe(0);
  });

  it('rows carry no raw device or document id: keyed refs under the audit key, and the user only in the erasable column', async () => {
    const t = setup();
    const [u, a, b, c] = [user(), device(), device(), doc()];
    const e = t.events;
    e.emit('authenticated', { conn: 1, user: u, device: a, tier: 'premium', newUser: true });
    e.emit('deviceRegistered', { user: u, device: b });
    e.emit('committed', commit(u, a, c, 10));
    e.emit('refused', { user: u, device: a, code: 'QUOTA_EXCEEDED', frame: 'push', kind: 'deferred' });
    e.emit('refused', { user: u, device: a, code: 'BAD_SIGNATURE', frame: 'push', kind: 'rejected' });
    e.emit('crisisMeasured', { user: u, device: b, doc: c, seq: 3 as Seq, latencyMs: 48.26, relayMs: 3.04, heldForCatchUp: false, breached: false });
    e.emit('crisisMeasured', { user: u, device: b, doc: c, seq: 4 as Seq, latencyMs: 250, relayMs: 180, heldForCatchUp: false, breached: true });
    e.emit('crisisReceiptMissing', { user: u, device: b, doc: c, seq: 5 as Seq, waitedMs: 5_000 });
    e.emit('crisisAnomaly', { user: u, device: a, bytes: 9_000_000 });
    e.emit('laneReported', { user: u, reporter: b, author: a, doc: c, lane: 10 });
    e.emit('deviceRevoked', { user: u, device: b });
    await t.close();
    const rows = await t.rows();
    expect(rows.map((r) => `${r.op} ${r.outcome}`)).toEqual([
      'auth.login authenticated',
      'device.register registered',
      'sync.commit committed',
      'crisis.receipt within_sla',
      'crisis.receipt breached',
      'crisis.receipt-missing missing',
      'crisis.anomaly anomaly',
      'lane.report reported',
      'device.revoke revoked',
      // Counted rows come at the end of their window.
      'sync.refused QUOTA_EXCEEDED',
      'sync.refused BAD_SIGNATURE',
    ]);
    const db = new Database(t.path, { readonly: true });
    const key = Buffer.from(db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'audit_key'`).get()!.value, 'hex');
    db.close();
    const ref = (x: string) => auditUserRef(key, x);
    expect(JSON.parse(rows[2]!.detail)).toMatchObject({ device: ref(a), doc: ref(c), lane: 10 });
    expect(JSON.parse(rows[7]!.detail)).toMatchObject({ reporter: ref(b), author: ref(a), doc: ref(c) });
    expect(JSON.parse(rows[10]!.detail)).toEqual({ kind: 'rejected', frame: 'push', device: ref(a), count: 1 });
    expect(rows.every((r) => r.userRef === ref(u) && r.userId === u)).toBe(true);
    // Neither the rows nor the database files hold a device or document id as such.
    const text = JSON.stringify(rows);
    for (const raw of [a, b, c]) expect(text).not.toContain(raw);
    for (const file of [t.path, `${t.path}-wal`].filter(existsSync)) {
      const bytes = readFileSync(file);
      for (const raw of [a, b, c]) expect(bytes.includes(Buffer.from(raw))).toBe(false);
    }
  });

  it('close writes what is queued and stops listening', async () => {
    const t = setup();
    const [u, d, c] = [user(), device(), doc()];
    t.events.emit('committed', commit(u, d, c));
    t.events.emit('authFailed', { code: 'AUTH_TIMEOUT' });
    await t.close();
    expect(await t.rows()).toHaveLength(2);
    expect(t.clock.pending()).toBe(0);
    t.events.emit('committed', commit(u, d, c));
    await t.clock.advance(1_000);
    expect(await t.rows()).toHaveLength(2);
    expect(t.audit.pending()).toBe(0);
  });

  it("a relay's shutdown writes the queued rows before its store closes", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keel-sync-audit-relay-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const config = RelayConfigSchema.parse({ port: 0, host: '127.0.0.1', db: join(dir, 'relay.db') });
    // Timers that never fire: only the shutdown can write these rows.
    const clock = createFakeClock(T0);
    const relay = await startRelay({ config, store: openSqliteStore({ path: config.db }), log: silentLogger, now: clock.now, timers: clock.timers });
    let closed = false;
    cleanups.push(async () => {
      if (!closed) await relay.close();
    });
    const [u, d, c] = [user(), device(), doc()];
    for (let i = 0; i < 3; i++) relay.events.emit('committed', commit(u, d, c, 10));
    relay.events.emit('authFailed', { code: 'AUTH_TIMEOUT' });
    closed = true;
    await relay.close();
    const db = new Database(config.db, { readonly: true });
    const rows = db.prepare<[], { op: string }>(`SELECT op FROM audit ORDER BY seq`).all().map((r) => r.op);
    db.close();
    expect(rows).toEqual([SyncAuditOp.commit, SyncAuditOp.commit, SyncAuditOp.commit, SyncAuditOp.authFailed]);
  });
});
