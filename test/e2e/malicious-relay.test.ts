import { createIdentity, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { acrossTheMiddle, startMaliciousRelay } from '../support/malicious-relay.js';
import { useTestScope } from '../support/scope.js';

/**
 * A client no relay can fool (step 6). Every test here runs a real device (createNodeClient,
 * real libsodium keys) against the malicious relay of test/support/malicious-relay.ts, alone or
 * in front of the real relay process, and checks what the device holds afterwards.
 */

const scope = useTestScope();
const SPEC = { class: 'safety_plan', name: 'main' } as const;

describe('the malicious relay, honest (controls)', () => {
  it('standalone: two devices of one user converge through its honest core', async () => {
    const relay = await startMaliciousRelay({ mode: 'standalone' });
    scope.defer(() => relay.close());
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA);
    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const docA = await a.client.open(SPEC);
    const docB = await b.client.open(SPEC);
    await relay.ready(2);
    docA.getMap('plan').set('call', '988');
    await waitFor(() => docB.getMap('plan').get('call') === '988', 5_000, 'A’s edit at B');
    docB.getMap('plan').set('walk', 'park');
    await waitFor(() => docA.getMap('plan').get('walk') === 'park', 5_000, 'B’s edit at A');
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('in the middle: a pinned device authenticates through it to the real relay and converges with a direct device', async () => {
    const { mitm, a, b, docA, docB } = await acrossTheMiddle(scope, SPEC);
    docA.getMap('plan').set('call', '988');
    await waitFor(() => docB.getMap('plan').get('call') === '988', 5_000, 'A’s edit at B');
    docB.getMap('plan').set('walk', 'park');
    await waitFor(() => docA.getMap('plan').get('walk') === 'park', 5_000, 'B’s edit at A');
    expect(mitm.fromDevices[0]?.slice(0, 2).map((f) => f.type)).toEqual(['hello', 'auth']);
    expect([...a.errors, ...b.errors]).toEqual([]);
  });
});

describe('finding 7: a relay in the middle', () => {
  it('a device pinned to its relay gives a rogue relay’s challenge no signature, whether the rogue names itself or forwards another deployment’s', async () => {
    const home = await scope.relay();
    const elsewhere = await scope.relay();
    const identity = await createIdentity();
    const first = await scope.device(home.url, identity);
    await first.client.open(SPEC);
    await first.client.whenSynced();
    const pinned = first.client.relayId!;
    await first.client.close();

    const rogue = await startMaliciousRelay({ mode: 'standalone' });
    scope.defer(() => rogue.close());
    const forwarding = await startMaliciousRelay({ mode: 'mitm', upstream: elsewhere.url });
    scope.defer(() => forwarding.close());
    for (const url of [rogue.url, forwarding.url]) {
      const victim = await scope.device(url, identity, undefined, { relayId: pinned });
      (await victim.client.open(SPEC)).getMap('plan').set('step', 'breathe');
      await waitFor(() => victim.errors.some((e) => e.final), 5_000, 'the device refuses the relay');
      expect(victim.errors.find((e) => e.final)?.code).toBe('RELAY_MISMATCH');
    }
    // Neither got an answer to its challenge, so neither got a session as the device.
    for (const relay of [rogue, forwarding]) {
      expect(relay.fromDevices.flat().map((f) => f.type)).toEqual(['hello']);
      expect(relay.sessions).toBe(0);
    }
  });
});
