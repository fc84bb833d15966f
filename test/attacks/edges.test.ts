import { randomBytes } from 'node:crypto';
import { createIdentity, serializeIdentity } from '@keel/client';
import { CloseCode } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { startCrisisProbe } from '../support/crisis-probe.js';
import { docRef, flipBit, sealFor } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/** Finding 8 of step 5, the parts that concern sockets (the HTTP ones are in test/e2e/http-edge.test.ts). */
describe('attack: sockets at the edge', () => {
  const scope = useTestScope();

  it('a socket paused for flooding that runs out of its bad-frame budget is closed at once (4000), not after 30 s', async () => {
    const relay = await scope.relay();
    const probe = await startCrisisProbe(scope, relay.url);
    const mallory = await createIdentity();
    const env = sealFor(mallory, docRef(mallory, 'checkin', 'forged'), 1, randomBytes(64 * 1024));
    const forged = JSON.stringify({ type: 'push', envs: [{ ...env, ct: flipBit(env.ct, 3) }] });
    // Far more than the work queue lets one socket queue (it is paused past 4), each a forgery.
    const frames = Array.from({ length: 64 }, () => forged);
    const started = Date.now();
    const attacker = await startAttacker(scope, { url: relay.url, sockets: [{ auth: serializeIdentity(mallory), frames, hold: true }], durationMs: 20_000 });
    const report = await attacker.done;
    const elapsed = Date.now() - started;
    const crisis = await probe.stop();
    expect(report.closes[CloseCode.PROTOCOL_ABUSE]).toBe(1);
    // Closed within its close grace (1 s) of the 32nd forgery, not ws's 30 s close timeout.
    expect(elapsed).toBeLessThan(5_000);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
  });
});
