import { randomBytes } from 'node:crypto';
import { createIdentity, joinWithPairingCode } from '@keel/client';
import { ErrorCode } from '@keel/engine';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import type { AuditReport } from '../../packages/relay/src/commands/audit-report-summary.js';
import { openRawSocket } from '../support/raw-device.js';
import { runRelayCli } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';
import { newWebhookSecret, runScript, scriptedRunEnv } from '../support/scripted-run.js';

/*
 * The sync audit trail of a real relay process: a scripted run of real devices (crisis and bulk
 * edits, a refused frame, a payment webhook), one handshake of an unknown device, one pairing;
 * then the relay stops (writing its queued rows), and `keel-relay audit report` and
 * `audit verify` — the built CLI — read the database it left.
 */

const scope = useTestScope();

describe('sync audit trail', () => {
  it('records what a run did, reports it, verifies, and names a sync row edited afterwards', async () => {
    const started = Date.now();
    const secret = newWebhookSecret();
    const relay = await scope.relay({ env: scriptedRunEnv(secret) });
    const run = await runScript(scope, relay, secret, `A${randomBytes(6).toString('hex')}`);

    // One auth failure: a device the relay does not know, without a certificate.
    const stranger = await createIdentity();
    const probe = await openRawSocket(relay.url);
    probe.sendFrame({ type: 'hello', v: 1, user: stranger.user.userId, device: stranger.device.deviceId });
    expect(await probe.nextOf('error', 5_000)).toMatchObject({ code: ErrorCode.UNKNOWN_DEVICE });
    await probe.expectClose();

    // One pairing: the first device opens a code, a new device joins with it, the first grants.
    const { code, linked } = await run.devices[0]!.client.startPairing({ ttlMs: 30_000 });
    const joined = await joinWithPairingCode({ url: relay.url, code, WebSocket });
    expect((await linked).device).toBe(joined.device.deviceId);

    for (const d of run.devices) await d.client.close();
    await relay.stop();

    const window = ['--from', String(started - 1_000), '--to', String(Date.now() + 1_000), '--db', relay.dbPath];
    const reported = await runRelayCli(['audit', 'report', ...window, '--json']);
    expect(reported.stderr).toBe('');
    expect(reported.code).toBe(0);
    const r = JSON.parse(reported.stdout) as AuditReport;
    expect(r.unreadable).toBe(0);
    expect(r.droppedRows).toBe(0);
    // Sync operations: at least one per flushed edit (5 crisis + 1 journal per user), on the crisis lane and the mood lane.
    const crisisLane = r.lanes.find((l) => l.lane === 10)!;
    const moodLane = r.lanes.find((l) => l.lane === 6)!;
    expect(crisisLane.operations).toBeGreaterThanOrEqual(run.crisisEdits * 2);
    expect(moodLane.operations).toBeGreaterThanOrEqual(2);
    expect(crisisLane.bytes).toBeGreaterThan(0);
    const syncOps = Object.values(r.slaByTier).reduce((n, t) => n + t.operations, 0);
    expect(syncOps).toBe(r.lanes.reduce((n, l) => n + l.operations, 0));
    expect(syncOps).toBeGreaterThanOrEqual((run.crisisEdits + 1) * 2);
    // Crisis edits sent live to the user's other device come back as receipts (an edit that
    // reaches it on its catch-up, before it subscribed, has none: 9 or 10 of the 10 here).
    expect(r.crisis.receipts).toBeGreaterThanOrEqual(run.crisisEdits);
    expect(r.crisis.receipts).toBeLessThanOrEqual(run.crisisEdits * 2);
    expect(r.crisis.p50Ms).not.toBeNull();
    expect(r.crisis.maxMs).toBeGreaterThanOrEqual(r.crisis.p99Ms!);
    expect(r.crisis.missing).toBe(0);
    // Exactly the one handshake refused, and the one frame refused before authentication.
    expect(r.authFailures).toEqual({ [ErrorCode.UNKNOWN_DEVICE]: 1 });
    expect(Object.values(r.badFrames).reduce((a, b) => a + b, 0) + Object.values(r.refusals).reduce((a, b) => a + b, 0)).toBe(1);
    // Four devices of the script and the paired one registered; the pairing's three steps.
    expect(r.devices.registered).toBe(5);
    // The paired device never connects here: the four of the script logged in.
    expect(r.devices.logins).toBeGreaterThanOrEqual(4);
    expect(r.pairing).toEqual({ granted: 1, joined: 1, opened: 1 });
    // The webhook's tier change is in the same trail.
    expect(r.otherOps['tier.set']).toBe(1);

    const text = await runRelayCli(['audit', 'report', ...window]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain(`Auth failures: ${ErrorCode.UNKNOWN_DEVICE} 1`);
    // Pseudonymous only: no user, device or document id in the report, nor a device or document id in any audit row.
    const live = new Database(relay.dbPath, { readonly: true });
    const ids = live
      .prepare<[], { id: string }>(`SELECT user_id AS id FROM users UNION SELECT device_id FROM devices UNION SELECT doc_id FROM docs`)
      .all()
      .map((x) => x.id);
    const details = live.prepare<[], { detail: string }>(`SELECT detail FROM audit`).all().map((x) => x.detail).join('\n');
    live.close();
    expect(ids.length).toBeGreaterThan(8);
    for (const id of ids) {
      expect(text.stdout + reported.stdout).not.toContain(id);
      expect(details).not.toContain(id);
    }

    const verified = await runRelayCli(['audit', 'verify', '--db', relay.dbPath]);
    expect(verified.stdout).toContain('audit trail OK');
    expect(verified.code).toBe(0);

    // Someone with the file edits one sync row (a commit made to look larger).
    const db = new Database(relay.dbPath);
    const row = db.prepare<[], { seq: number }>(`SELECT seq FROM audit WHERE op = 'sync.commit' ORDER BY seq LIMIT 1 OFFSET 3`).get()!;
    db.exec('DROP TRIGGER audit_no_update');
    db.prepare(`UPDATE audit SET detail = json_set(detail, '$.bytes', json_extract(detail, '$.bytes') + 1) WHERE seq = ?`).run(row.seq);
    db.close();
    const broken = await runRelayCli(['audit', 'verify', '--db', relay.dbPath]);
    expect(broken.code).toBe(1);
    expect(broken.stdout).toContain(`BROKEN at seq ${row.seq} (altered)`);
  }, 60_000);
});
