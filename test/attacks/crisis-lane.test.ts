import { randomBytes } from 'node:crypto';
import { createIdentity, serializeIdentity } from '@keel/client';
import { type Envelope, ErrorCode } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { connectRawDevice, docRef, logRowsByDevice, sealFor } from '../support/raw-device.js';
import { errorLinesBesidesCrisisAlerts } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

/**
 * Finding 3 of step 5: one signed frame of hundreds of envelopes, one of them on a crisis lane,
 * took the synchronous fast path whole, and an identical resend was signature-checked in full
 * before the duplicate was noticed — honest crisis p50 rose to ~0.8 s.
 */
describe('attack: crisis-lane floods', () => {
  const scope = useTestScope();

  it('resending one signed 500-envelope frame with a crisis envelope in it: answered as duplicates, crisis p99 < 200 ms', async () => {
    const relay = await scope.relay();
    const mallory = await createIdentity();
    const bulk = docRef(mallory, 'history', 'flood');
    const crisis = docRef(mallory, 'safety_plan', 'flood');
    const envs: Envelope[] = [...Array.from({ length: 499 }, (_, i) => sealFor(mallory, bulk, i + 1, randomBytes(1024))), sealFor(mallory, crisis, 1, randomBytes(64))];
    const frame = JSON.stringify({ type: 'push', envs });
    // Stored once, honestly.
    const first = await connectRawDevice(relay.url, mallory);
    scope.defer(() => first.close());
    first.send(frame);
    await first.next((f) => f.type === 'ack' && f.acks.some((a) => a.doc === crisis.id), 10_000);
    for (let i = 0; i < 200 && (logRowsByDevice(relay.dbPath).get(mallory.device.deviceId) ?? 0) < 500; i++) await new Promise((r) => setTimeout(r, 20));
    await first.close();

    const probe = await startCrisisProbe(scope, relay.url);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      sockets: Array.from({ length: 4 }, () => ({ auth: serializeIdentity(mallory), frames: [frame], rounds: 10_000 })),
      durationMs: 8_000,
    });
    const report = await attacker.done;
    const stats = await probe.stop();
    console.info('crisis-lane resend flood', { report: { ...report, errors: report.errors.length }, crisis: stats, memory: memoryOf(relay.pid) });

    expect(report.sent).toBeGreaterThan(40);
    expect(stats.lost).toBe(0);
    expect(stats.p99).toBeLessThan(200);
    // Nothing was stored twice.
    expect(logRowsByDevice(relay.dbPath).get(mallory.device.deviceId)).toBe(500);
    expect(isAlive(relay.pid)).toBe(true);
    expect(errorLinesBesidesCrisisAlerts(relay.output())).toEqual([]);
  });

  it('a flood of new crisis-lane envelopes waits its turn behind other users’ crisis edits, and stops at the disk-safety ceiling', async () => {
    const ceiling = 4 * 1024 * 1024;
    const relay = await scope.relay({ env: { KEEL_RELAY_CRISIS_CEILING_BYTES: String(ceiling), KEEL_RELAY_CRISIS_ANOMALY_BYTES: String(ceiling / 4) } });
    const mallory = await createIdentity();
    // 6 MiB of fresh crisis-lane envelopes in 24 frames, every one signed (no duplicates to skip).
    const frames: string[] = [];
    let counter = 0;
    for (let f = 0; f < 24; f++) {
      const doc = docRef(mallory, 'crisis_contacts', 'flood');
      frames.push(JSON.stringify({ type: 'push', envs: Array.from({ length: 128 }, () => sealFor(mallory, doc, ++counter, randomBytes(2048))) }));
    }
    const probe = await startCrisisProbe(scope, relay.url);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      sockets: [{ auth: serializeIdentity(mallory), frames, hold: true }],
      durationMs: 8_000,
    });
    const report = await attacker.done;
    const stats = await probe.stop();
    const stored = logRowsByDevice(relay.dbPath).get(mallory.device.deviceId) ?? 0;
    console.info('crisis-lane write flood', { report: { ...report, errors: report.errors.length }, crisis: stats, stored });

    expect(report.sent).toBe(24);
    expect(stats.lost).toBe(0);
    expect(stats.p99).toBeLessThan(200);
    // Past the ceiling (4 MiB of ~2 KiB envelopes ≈ 2,000) the rest is deferred, not stored.
    expect(stored).toBeGreaterThan(1_500);
    expect(stored).toBeLessThan(2_100);
    expect(relay.output()).toMatch(/"msg":"crisis lane volume anomaly"/);
    expect(relay.output()).toMatch(/"msg":"crisis lane ceiling reached"/);
    // The ceiling is per device: the honest user's crisis edits were never refused.
    const deferredOthers = relay
      .output()
      .split('\n')
      .filter((line) => line.includes('"msg":"envelope deferred"') && !line.includes(mallory.device.deviceId));
    expect(deferredOthers).toEqual([]);
    expect(isAlive(relay.pid)).toBe(true);
  });

  it('defers a device past its ceiling with a typed refusal and a retry time', async () => {
    const relay = await scope.relay({ env: { KEEL_RELAY_CRISIS_CEILING_BYTES: String(64 * 1024), KEEL_RELAY_CRISIS_ANOMALY_BYTES: String(16 * 1024) } });
    const mallory = await createIdentity();
    const s = await connectRawDevice(relay.url, mallory);
    scope.defer(() => s.close());
    const doc = docRef(mallory, 'safety_plan', 'big');
    s.sendFrame({ type: 'push', envs: Array.from({ length: 40 }, (_, i) => sealFor(mallory, doc, i + 1, randomBytes(2048))) });
    const reject = await s.nextOf('reject', 5_000);
    expect(reject.code).toBe(ErrorCode.QUOTA_EXCEEDED);
    expect(reject.retryAfterMs).toBeGreaterThan(0);
    expect(reject.retryAfterMs).toBeLessThanOrEqual(86_400_000);
  });
});
