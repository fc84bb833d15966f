import { randomBytes } from 'node:crypto';
import { type Identity, createIdentity, serializeIdentity } from '@keel/client';
import { ErrorCode, WireLimits } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { type DocRef, type RawSocket, connectRawDevice, docRef, sealFor } from '../support/raw-device.js';
import { errorLinesBesidesCrisisAlerts } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

/** Writes `mib` MiB of ciphertext into `doc` as the attacker's own device, one 512 KiB envelope per frame. */
const fillDocument = async (socket: RawSocket, identity: Identity, doc: DocRef, mib: number): Promise<void> => {
  for (let counter = 1; counter <= mib * 2; counter++) {
    socket.sendFrame({ type: 'push', envs: [sealFor(identity, doc, counter, randomBytes(512 * 1024))] });
    await socket.next((f) => f.type === 'ack' && f.acks.some((a) => a.counter === counter), 10_000);
  }
};

/**
 * Finding 2 of step 5: one small `sub` frame naming a large document a thousand times, on a
 * socket that never reads, made the relay queue the whole log a thousand times over (crisis
 * stalled for seconds; with a large document the relay died of heap exhaustion).
 */
describe('attack: subscription amplification', () => {
  const scope = useTestScope();

  it('a sub frame naming a 24 MiB document 1,000 times on sockets that never read: memory bounded, crisis p99 < 200 ms', async () => {
    const relay = await scope.relay();
    const mallory = await createIdentity();
    const big = docRef(mallory, 'history', 'big');
    const writer = await connectRawDevice(relay.url, mallory);
    scope.defer(() => writer.close());
    await fillDocument(writer, mallory, big, 24);
    await writer.close();

    const probe = await startCrisisProbe(scope, relay.url);
    const before = memoryOf(relay.pid);
    const amplify = JSON.stringify({ type: 'sub', docs: Array.from({ length: WireLimits.maxDocsPerSubscribe }, () => ({ doc: big.id, after: 0 })) });
    const resubscribe = JSON.stringify({ type: 'sub', docs: [{ doc: big.id, after: 0 }] });
    const attacker = await startAttacker(scope, {
      url: relay.url,
      sockets: Array.from({ length: 8 }, () => ({
        auth: serializeIdentity(mallory),
        // Subscribe a thousand times over, then keep restarting the catch-up, never reading.
        frames: [amplify, ...Array.from({ length: 50 }, () => resubscribe)],
        read: false,
        hold: true,
      })),
      durationMs: 8_000,
    });
    const report = await attacker.done;
    const crisis = await probe.stop();
    const after = memoryOf(relay.pid);
    console.info('subscription amplification', { report: { ...report, errors: report.errors.length }, crisis, before, after });

    expect(report.authenticated).toBe(8);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
    // Each non-reading socket holds at most about one catch-up page and the outgoing window.
    expect(after.peakMiB - before.rssMiB).toBeLessThan(150);
    expect(isAlive(relay.pid)).toBe(true);
    expect(errorLinesBesidesCrisisAlerts(relay.output())).toEqual([]);
  });

  it('caps the documents one connection may subscribe to, with one typed error per frame for the documents refused', async () => {
    const relay = await scope.relay({ env: { KEEL_RELAY_MAX_SUBSCRIPTIONS: '1500' } });
    const mallory = await createIdentity();
    const s = await connectRawDevice(relay.url, mallory);
    scope.defer(() => s.close());
    const ids = Array.from({ length: 2 * WireLimits.maxDocsPerSubscribe }, (_, i) => docRef(mallory, 'history', `d${i}`).id);
    s.sendFrame({ type: 'sub', docs: ids.slice(0, WireLimits.maxDocsPerSubscribe).map((doc) => ({ doc, after: 0 })) });
    s.sendFrame({ type: 'sub', docs: ids.slice(WireLimits.maxDocsPerSubscribe).map((doc) => ({ doc, after: 0 })) });
    const deadline = Date.now() + 10_000;
    const answered = () => s.received.filter((f) => f.type === 'synced' || (f.type === 'error' && f.doc !== undefined)).length;
    while (answered() < 1501 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    const synced = s.received.filter((f) => f.type === 'synced');
    const refused = s.received.filter((f) => f.type === 'error' && f.code === ErrorCode.LIMIT_EXCEEDED);
    expect(synced).toHaveLength(1500);
    // One answer for the frame, naming its first refused document and how many were refused.
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ doc: ids[1500], message: expect.stringContaining(`${ids.length - 1500} of this frame's documents`) });
    // The same documents again change nothing (already subscribed), and the socket still works.
    s.sendFrame({ type: 'sub', docs: ids.slice(0, 10).map((doc) => ({ doc, after: 0 })) });
    s.sendFrame({ type: 'unsub', docs: ids.slice(0, 10) });
    s.sendFrame({ type: 'sub', docs: ids.slice(-10).map((doc) => ({ doc, after: 0 })) });
    await s.next((f) => f.type === 'synced' && f.doc === ids.at(-1), 5_000);
  });
});
