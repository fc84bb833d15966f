import { randomBytes } from 'node:crypto';
import { createIdentity, linkNewDevice, serializeIdentity } from '@keel/client';
import { CloseCode, WireLimits } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { waitFor } from '../support/devices.js';
import { errorLinesBesidesCrisisAlerts } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

/** A document id of the right shape that names nothing: what a client may put in `sub`. */
const someDocId = () => `doc_${randomBytes(32).toString('base64url')}`;

/**
 * Step 8: one address flooding the relay with connections, and one connection subscribing to
 * 100,000 documents. Both come from an attacker process; the honest crisis probe connects from
 * 127.0.0.1 and the attacker from 127.0.0.2 (another address on the loopback network).
 */
describe('attack: connections and subscriptions from one source', () => {
  const scope = useTestScope();

  it('a flood of connections from one address is answered 429 past its rate and share, while other addresses connect and crisis p99 < 200 ms', async () => {
    const relay = await scope.relay({
      env: { KEEL_RELAY_ADDRESS_CONNECT_BURST: '64', KEEL_RELAY_ADDRESS_CONNECT_PER_SECOND: '16', KEEL_RELAY_MAX_PENDING_PER_ADDRESS: '48' },
    });
    const probe = await startCrisisProbe(scope, relay.url);
    const before = memoryOf(relay.pid);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      localAddress: '127.0.0.2',
      // Sockets that open and say nothing, wave after wave.
      sockets: Array.from({ length: 200 }, () => ({ frames: [], hold: 1_500 })),
      waves: 4,
      durationMs: 6_000,
    });
    // Meanwhile a new honest device (another address) connects and syncs.
    const user = await createIdentity();
    const phone = await scope.device(relay.url, user);
    const laptop = await scope.device(relay.url, await linkNewDevice(user));
    const plan = await phone.client.open({ class: 'safety_plan', name: 'main' });
    const planB = await laptop.client.open({ class: 'safety_plan', name: 'main' });
    plan.getMap('plan').set('who', 'call my sister');
    await waitFor(() => planB.getMap('plan').get('who') === 'call my sister', 5_000, 'the honest device syncs during the flood');
    const report = await attacker.done;
    const crisis = await probe.stop();
    const after = memoryOf(relay.pid);
    console.info('connection flood from one address', { report: { ...report, errors: report.errors.length }, crisis, before, after });

    // At most the burst plus the refill got a socket, never more than the address's share at once.
    expect(report.refused[429]).toBeGreaterThan(400);
    expect(report.opened).toBeLessThan(64 + 16 * 7);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
    expect(after.peakMiB - before.rssMiB).toBeLessThan(64);
    expect(isAlive(relay.pid)).toBe(true);
  });

  it('connections each subscribing to 100,000 documents get their cap, then refusals that close them; crisis p99 < 200 ms', async () => {
    const relay = await scope.relay();
    const mallory = await createIdentity();
    const frames = Array.from({ length: Math.ceil(100_000 / WireLimits.maxDocsPerSubscribe) }, () =>
      JSON.stringify({ type: 'sub', docs: Array.from({ length: WireLimits.maxDocsPerSubscribe }, () => ({ doc: someDocId(), after: 0 })) }),
    );
    const probe = await startCrisisProbe(scope, relay.url);
    const before = memoryOf(relay.pid);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      // Again and again on new connections: each is cut off after its bad-frame budget.
      sockets: [{ auth: serializeIdentity(mallory), frames, hold: 2_000 }],
      waves: 5,
      durationMs: 20_000,
    });
    const report = await attacker.done;
    const crisis = await probe.stop();
    const after = memoryOf(relay.pid);
    console.info('100,000 subscriptions on one connection', { report: { ...report, errors: report.errors.length }, crisis, before, after });

    expect(report.authenticated).toBe(5);
    // Its cap (4 frames of 1,024), then one refusal per frame, each a bad frame: closed after 32 (4000).
    expect(report.closes[CloseCode.PROTOCOL_ABUSE]).toBe(5);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
    expect(after.peakMiB - before.rssMiB).toBeLessThan(128);
    expect(isAlive(relay.pid)).toBe(true);
    expect(errorLinesBesidesCrisisAlerts(relay.output())).toEqual([]);
  });
});
