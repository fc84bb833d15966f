import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_TIERS, type DeviceId, type DocId, type Seq, type UserId } from '@keel/engine';
import { afterEach, describe, expect, it } from 'vitest';
import { type AuditReport, createAuditReport } from '../src/commands/audit-report-summary.js';
import { auditReportCommand } from '../src/commands/audit-report.js';
import type { CommandIo } from '../src/commands/command.js';
import { COMMANDS } from '../src/commands/index.js';
import { createRelayEvents } from '../src/events/relay-events.js';
import { silentLogger } from '../src/log.js';
import { createSyncAudit } from '../src/observe/sync-audit.js';
import { openSqliteStore } from '../src/storage/sqlite-store.js';
import { createFakeClock } from './fake-clock.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'keel-audit-report-'));
  dirs.push(dir);
  return dir;
};

const T0 = Date.parse('2026-11-01T00:00:00Z');
const HOUR = 3_600_000;
const id = (p: string) => `${p}${randomBytes(24).toString('base64url')}`;

const run = async (argv: readonly string[]) => {
  let out = '';
  let err = '';
  const io: CommandIo = { out: (t) => (out += t), err: (t) => (err += t), env: {}, now: () => T0 };
  const code = await COMMANDS.audit!(argv, io);
  return { code, out, err };
};

/**
 * A relay database whose trail the real listener wrote from real bus events: an hour before the
 * window (must not count), then a known mix inside it, then an hour after (must not count).
 */
const trail = async (): Promise<string> => {
  const path = join(tempDir(), 'relay.db');
  const store = openSqliteStore({ path });
  const clock = createFakeClock(T0 - HOUR);
  const events = createRelayEvents({ log: silentLogger, now: clock.now });
  const audit = createSyncAudit({ events, store, log: silentLogger, timers: clock.timers });
  const [u, d1, d2, doc] = [id('u_') as UserId, id('d_') as DeviceId, id('d_') as DeviceId, id('doc_') as DocId];
  const commit = (lane: number, latencyMs: number, tier: 'basic' | 'premium', bytes = 100) =>
    events.emit('committed', { user: u, device: d1, doc, lane, envelopes: 2, bytes, latencyMs, tier });

  commit(4, 10, 'basic'); // before the window
  await clock.advance(HOUR);
  // Inside: basic (5000 ms promise) 3 ops, one late; premium (500 ms) 2 ops, one late.
  commit(4, 100, 'basic', 1_000);
  commit(4, 4_999, 'basic', 1_000);
  commit(3, 6_000, 'basic', 50);
  commit(10, 20, 'premium', 10);
  commit(10, 900, 'premium', 10);
  // 100 crisis receipts: 1..100 ms, and one breach at 250 ms.
  for (let i = 1; i <= 100; i++) events.emit('crisisMeasured', { user: u, device: d2, doc, seq: i as Seq, latencyMs: i, relayMs: i / 2, heldForCatchUp: false, breached: false });
  events.emit('crisisMeasured', { user: u, device: d2, doc, seq: 101 as Seq, latencyMs: 250, relayMs: 20, heldForCatchUp: false, breached: true });
  events.emit('crisisReceiptMissing', { user: u, device: d2, doc, seq: 102 as Seq, waitedMs: 5_000 });
  for (let i = 0; i < 3; i++) events.emit('authFailed', { code: 'AUTH_FAILED' });
  events.emit('authFailed', { code: 'UNKNOWN_DEVICE' });
  events.emit('refused', { user: u, device: d1, code: 'QUOTA_EXCEEDED', frame: 'push', kind: 'deferred' });
  events.emit('refused', { user: u, device: d1, code: 'BAD_FRAME', frame: 'unknown', kind: 'bad-frame' });
  events.emit('crisisAnomaly', { user: u, device: d1, bytes: 1 });
  events.emit('laneReported', { user: u, reporter: d2, author: d1, doc, lane: 10 });
  events.emit('authenticated', { conn: 1, user: u, device: d1, tier: 'basic', newUser: true });
  events.emit('deviceRegistered', { user: u, device: d2 });
  events.emit('deviceRevoked', { user: u, device: d2 });
  events.emit('pairing', { outcome: 'opened' });
  events.emit('pairing', { outcome: 'granted' });
  await clock.advance(250);
  await store.appendAudit([{ actor: 'operator', op: 'tier.set', userId: u, outcome: 'applied', detail: { from: 'trial', to: 'basic', event: null } }], clock.now());
  await store.appendAudit([{ actor: 'operator', op: 'user.export', userId: u, outcome: 'exported', detail: { rows: 3 } }], clock.now());
  await clock.advance(HOUR);
  commit(4, 10, 'basic'); // after the window
  events.emit('authFailed', { code: 'AUTH_FAILED' });
  await audit.close();
  await store.close();
  return path;
};

describe('audit report', () => {
  it('summarises exactly the window: crisis receipts, SLA by tier, lanes, refusals, auth, devices, pairing, data rights', async () => {
    const db = await trail();
    const from = new Date(T0).toISOString();
    const to = String(T0 + HOUR);
    const result = await run(['report', '--from', from, '--to', to, '--db', db, '--json']);
    expect(result.err).toBe('');
    expect(result.code).toBe(0);
    const r = JSON.parse(result.out) as AuditReport;
    expect(r.unreadable).toBe(0);
    expect(r.crisis).toEqual({ receipts: 101, p50Ms: 51, p99Ms: 100, maxMs: 250, breaches: 1, missing: 1 });
    expect(r.slaByTier.basic).toEqual({ maxResponseMs: 5_000, operations: 3, within: 2, attainment: 2 / 3 });
    expect(r.slaByTier.premium).toEqual({ maxResponseMs: 500, operations: 2, within: 1, attainment: 0.5 });
    expect(r.slaByTier.trial!.attainment).toBeNull();
    expect(r.lanes).toEqual([
      { lane: 10, class: 'crisis_emergency', operations: 2, envelopes: 4, bytes: 20 },
      { lane: 4, class: 'basic_features', operations: 2, envelopes: 4, bytes: 2_000 },
      { lane: 3, class: 'background_sync', operations: 1, envelopes: 2, bytes: 50 },
    ]);
    expect(r.authFailures).toEqual({ AUTH_FAILED: 3, UNKNOWN_DEVICE: 1 });
    expect(r.refusals).toEqual({ QUOTA_EXCEEDED: 1 });
    expect(r.badFrames).toEqual({ BAD_FRAME: 1 });
    expect(r.anomalies).toEqual({ crisisVolume: 1, laneReports: 1 });
    expect(r.devices).toEqual({ logins: 1, registered: 1, revoked: 1 });
    expect(r.pairing).toEqual({ granted: 1, opened: 1 });
    expect(r.dataRights).toEqual({ 'user.export exported': 1 });
    expect(r.otherOps).toEqual({ 'tier.set': 1 });

    // A tier file moves the promise, and the attainment with it.
    const tiers = join(tempDir(), 'tiers.json');
    writeFileSync(tiers, JSON.stringify({ premium: { maxResponseMs: 1_000 } }));
    const loose = JSON.parse((await run(['report', '--from', from, '--to', to, '--db', db, '--tiers', tiers, '--json'])).out) as AuditReport;
    expect(loose.slaByTier.premium).toMatchObject({ maxResponseMs: 1_000, within: 2, attainment: 1 });

    // Human-readable by default.
    const text = await run(['report', '--from', from, '--to', to, '--db', db]);
    expect(text.code).toBe(0);
    expect(text.out).toContain('receipts 101; p50 51 ms, p99 100 ms, max 250 ms');
    expect(text.out).toMatch(/premium\s+1 \/ 2\s+50\.00%/);
    expect(text.out).toContain('Auth failures: AUTH_FAILED 3, UNKNOWN_DEVICE 1');

    // The whole day holds the rows before and after too.
    const day = JSON.parse((await run(['report', '--from', '2026-10-31', '--to', '2026-11-02', '--db', db, '--json'])).out) as AuditReport;
    expect(day.slaByTier.basic!.operations).toBe(5);
    expect(day.authFailures.AUTH_FAILED).toBe(4);
  });

  it('pages through a window longer than a page', async () => {
    const path = join(tempDir(), 'relay.db');
    const store = openSqliteStore({ path });
    const u = id('u_') as UserId;
    for (let batch = 0; batch < 5; batch++) {
      const drafts = Array.from({ length: 1_000 }, (_, i) => ({
        actor: 'device',
        op: 'sync.commit',
        userId: u,
        outcome: 'committed',
        detail: { lane: 4, envelopes: 1, bytes: 1, latencyMs: 1, tier: 'basic' },
        refs: { device: 'd', doc: 'x' },
        // Several rows per millisecond: paging must not skip or repeat rows of the same ms.
        at: T0 + batch * 1_000 + Math.floor(i / 3),
      }));
      await store.appendAudit(drafts, T0 + 10_000);
    }
    await store.close();
    const r = JSON.parse((await run(['report', '--from', String(T0), '--to', String(T0 + 10_000), '--db', path, '--json'])).out) as AuditReport;
    expect(r.rows).toBe(5_000);
    expect(r.slaByTier.basic!.operations).toBe(5_000);
  });

  it('usage errors exit 64; a missing database is a refusal; a damaged detail is counted, never a crash', async () => {
    const db = await trail();
    for (const argv of [
      ['report', '--from', '2026-11-02', '--to', '2026-11-01', '--db', db],
      ['report', '--from', 'yesterday', '--to', '2026-11-01', '--db', db],
      ['report', '--to', '2026-11-01', '--db', db],
      ['report', '--from', '2026-11-01', '--to', '2026-11-02', '--db', db, '--bogus'],
      ['report', '--from', '2026-11-01', '--to', '2026-11-02', '--db', db, '--tiers', join(tempDir(), 'none.json')],
      ['summarise', '--db', db],
    ]) {
      const result = await run(argv);
      expect(result.code, argv.join(' ')).toBe(64);
      expect(result.err, argv.join(' ')).toMatch(/^keel-relay: /);
    }
    const missing = await run(['report', '--from', '2026-11-01', '--to', '2026-11-02', '--db', join(tempDir(), 'none.db')]);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('no database at');
    // A detail that is not what its op writes is counted as unreadable, not guessed at.
    const report = createAuditReport(DEFAULT_TIERS, { from: T0, to: T0 + 1 });
    const row = { seq: 1, at: T0, actor: 'device', op: 'sync.commit', userId: null, userRef: null, outcome: 'committed', prevHash: '', hash: '' };
    report.push({ ...row, detail: '{"lane":"ten"}' });
    report.push({ ...row, detail: 'not json' });
    report.push({ ...row, op: 'auth.failed', detail: '{"count":-5}' });
    expect(report.result()).toMatchObject({ rows: 3, unreadable: 3, authFailures: {}, lanes: [] });
    // The command itself is what cli.ts runs for `audit report`.
    expect(await auditReportCommand(['report'], { out: () => {}, err: () => {}, env: {}, now: () => T0 })).toBe(64);
  });
});
