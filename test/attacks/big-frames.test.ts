import { randomBytes } from 'node:crypto';
import { createIdentity, serializeIdentity } from '@keel/client';
import { CloseCode, maxPartPayloadBytes } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { docRef, sealFor } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

const MAX_FRAME = 1024 * 1024;

/**
 * An authenticated device sending frames as large as the relay accepts, every one a new, validly
 * signed envelope: each costs the relay parsing, validation, a signature check and a commit in
 * turns of its event loop. With 32 MiB frames (the old default) an honest user's crisis p99 was
 * ~350 ms under this attack; frames are now 1 MiB by default and larger updates travel in parts.
 */
describe('attack: the largest frames an authenticated device may send', () => {
  const scope = useTestScope();

  it('new signed envelopes filling every 1 MiB frame from several sockets: crisis p99 < 200 ms, memory bounded', async () => {
    const relay = await scope.relay();
    const mallory = await createIdentity();
    const doc = docRef(mallory, 'history', 'big');
    const payload = maxPartPayloadBytes(MAX_FRAME);
    let counter = 0;
    const frames = Array.from({ length: 48 }, () => JSON.stringify({ type: 'push', envs: [sealFor(mallory, doc, ++counter, randomBytes(payload))] }));
    expect(frames.every((f) => f.length <= MAX_FRAME)).toBe(true);
    const probe = await startCrisisProbe(scope, relay.url);
    const before = memoryOf(relay.pid);
    // One socket per 12 frames (in counter order on each), so the relay sees 4 streams at once.
    const sockets = [0, 1, 2, 3].map((i) => ({ auth: serializeIdentity(mallory), frames: frames.slice(i * 12, i * 12 + 12), hold: true }));
    const attacker = await startAttacker(scope, { url: relay.url, sockets, durationMs: 8_000 });
    const report = await attacker.done;
    const crisis = await probe.stop();
    const after = memoryOf(relay.pid);
    console.info('largest frames', { report: { ...report, errors: report.errors.length }, crisis, before, after });
    expect(report.sent).toBe(48);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
    expect(after.peakMiB - before.rssMiB).toBeLessThan(200);
    expect(isAlive(relay.pid)).toBe(true);
  });

  it('a frame over the limit after authentication closes with 1009 at its header', async () => {
    const relay = await scope.relay();
    const mallory = await createIdentity();
    const frame = JSON.stringify({ type: 'push', envs: [sealFor(mallory, docRef(mallory, 'history', 'huge'), 1, randomBytes(24 * 1024 * 1024))] });
    const attacker = await startAttacker(scope, { url: relay.url, sockets: [{ auth: serializeIdentity(mallory), frames: [frame] }], durationMs: 5_000 });
    const report = await attacker.done;
    expect(report.authenticated).toBe(1);
    expect(report.closes[CloseCode.MESSAGE_TOO_BIG]).toBe(1);
    expect(isAlive(relay.pid)).toBe(true);
  });
});
