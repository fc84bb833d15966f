import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createIdentity, linkNewDevice, serializeIdentity } from '@keel/client';
import { ErrorCode } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { isAlive, startCrisisProbe } from '../support/crisis-probe.js';
import { waitFor } from '../support/devices.js';
import { docRef, mapUpdate, sealFor } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

const ALERT_SECRET = 'lane-abuse-alert-secret-0123';

/**
 * Step 8: a modified client of a user pushes a bulk document on the crisis lane, as fast as
 * it can, to skip every quota. The user's other device refuses it; the relay, which cannot see
 * classes, flags the user's crisis-lane volume as an anomaly (log, metric, audit, signed alert);
 * and the same user's real crisis edits keep arriving within the SLA.
 */
describe('attack: bulk data on the crisis lane', () => {
  const scope = useTestScope();

  it('the other device refuses it, the relay flags the anomaly, and the user’s own crisis edits still arrive < 200 ms', async () => {
    const alerts: string[] = [];
    const endpoint = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        alerts.push((JSON.parse(Buffer.concat(chunks).toString('utf8')) as { type: string }).type);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => endpoint.listen(0, '127.0.0.1', resolve));
    scope.defer(() => new Promise<void>((resolve) => endpoint.close(() => resolve())));
    const relay = await scope.relay({
      args: ['--alert-url', `http://127.0.0.1:${(endpoint.address() as AddressInfo).port}/alerts`],
      env: { KEEL_RELAY_ALERT_SECRET: ALERT_SECRET, KEEL_RELAY_CRISIS_ANOMALY_BYTES: String(2 * 1024 * 1024) },
    });
    const user = await createIdentity();
    const modified = await linkNewDevice(user);
    // 8 MiB of the user's `history` (a bulk class, base lane 3) sealed on lane 10, made before timing starts.
    const bulk = { ...docRef(user, 'history', 'archive'), lane: 10 as const };
    const frames = Array.from({ length: 32 }, (_, i) => JSON.stringify({ type: 'push', envs: [sealFor(modified, bulk, i + 1, mapUpdate(`part${i}`, randomBytes(192 * 1024).toString('base64')))] }));

    // The user's own two honest devices: the phone writes the safety plan, the laptop is timed applying it.
    const probe = await startCrisisProbe(scope, relay.url, { identity: user, intervalMs: 50, maxEdits: 10_000 });
    const laptop = probe.devices.b;
    const archive = await laptop.client.open({ class: 'history', name: 'archive' });
    await laptop.client.whenSynced();
    const attacker = await startAttacker(scope, { url: relay.url, sockets: [{ auth: serializeIdentity(modified), frames, hold: 2_000 }], durationMs: 10_000 });
    const report = await attacker.done;
    await waitFor(() => laptop.errors.filter((e) => e.code === ErrorCode.LANE_MISMATCH).length >= 32, 10_000, 'the laptop refusing every mislabelled envelope');
    const crisis = await probe.stop();
    await waitFor(() => alerts.includes('crisis_volume_anomaly'), 5_000, 'the anomaly alert');
    const metrics = await (await fetch(`${relay.httpUrl}/metrics`)).text();
    console.info('bulk on the crisis lane', { report: { ...report, errors: report.errors.length }, crisis, alerts });

    expect(report.sent).toBe(32);
    // Refused, neither applied nor staged.
    expect(archive.getMap('m').size).toBe(0);
    expect(laptop.client.stagedCount({ class: 'history', name: 'archive' })).toBe(0);
    // Flagged on every channel, once for the user today.
    expect(metrics).toContain('keel_crisis_anomalies_total 1');
    expect(metrics).toContain('keel_alerts_total{kind="crisis_volume_anomaly"} 1');
    expect(metrics).toMatch(/keel_lane_reports_total (3[2-9]|[4-9]\d|\d{3,})/);
    expect(relay.output()).toMatch(/"msg":"alert: crisis_volume_anomaly"/);
    // Never delayed or dropped: every envelope was stored and acknowledged.
    expect(Object.keys(report.closes)).toEqual(['1000']);
    // The user's own crisis edits, meanwhile.
    expect(crisis.lost).toBe(0);
    expect(crisis.received).toBeGreaterThan(20);
    expect(crisis.p99).toBeLessThan(200);
    expect(isAlive(relay.pid)).toBe(true);
  });
});
