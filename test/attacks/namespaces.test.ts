import { createIdentity, linkNewDevice } from '@keel/client';
import { ErrorCode } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { connectRawDevice, docOwners, docRef, mapUpdate, sealFor } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/**
 * Finding 4 of step 5: document ids were one global namespace and the first pusher owned a
 * document. A revoked device (it keeps the root key, so it can compute every document id of its
 * former user) registered a new user and wrote the victim's not-yet-written crisis-mode
 * document first; the victim's crisis mode was then refused and never reached their other device.
 */
describe('attack: document squatting', () => {
  const scope = useTestScope();

  it('a revoked device that squats the victim’s crisis-mode id under a new user changes nothing for the victim', async () => {
    const relay = await scope.relay();
    const probe = await startCrisisProbe(scope, relay.url);
    const victim = await createIdentity();
    const phone = await scope.device(relay.url, victim);
    const laptop = await scope.device(relay.url, await linkNewDevice(victim));
    const stolen = await linkNewDevice(victim);
    const thief = await scope.device(relay.url, stolen);
    await Promise.all([phone.client.whenSynced(), laptop.client.whenSynced(), thief.client.whenSynced()]);
    await phone.client.revokeDevice(stolen.device.deviceId);
    await waitFor(() => thief.errors.some((e) => e.code === ErrorCode.DEVICE_REVOKED || e.final === true), 5_000, 'the thief is cut off');

    // The thief still has the root key: it derives the victim's crisis-mode id and writes it
    // first, as a brand-new user of its own.
    const squatter = await createIdentity();
    const crisisModeId = phone.client.docId({ class: 'crisis_mode', name: 'state' });
    const target = { ...docRef(squatter, 'crisis_mode', 'state'), id: crisisModeId };
    expect(docRef(stolen, 'crisis_mode', 'state').id).toBe(crisisModeId);
    const s = await connectRawDevice(relay.url, squatter);
    scope.defer(() => s.close());
    s.sendFrame({ type: 'push', envs: [sealFor(squatter, target, 1, mapUpdate('active', false))] });
    expect((await s.nextOf('ack')).acks[0]).toMatchObject({ doc: crisisModeId, seq: 1 });

    // The victim turns crisis mode on: it reaches the other device at once, nothing is refused.
    const crisisOn = new Promise<void>((resolve) => laptop.client.on('crisis', (active) => active && resolve()));
    await phone.client.setCrisisMode(true);
    await phone.client.flush();
    await crisisOn;
    expect(laptop.client.crisisMode).toBe(true);
    expect(phone.errors.filter((e) => e.code === ErrorCode.NOT_AUTHORIZED)).toEqual([]);
    // Two documents under one id, one per user; neither sees the other.
    expect(docOwners(relay.dbPath).get(crisisModeId)).toEqual([victim.user.userId, squatter.user.userId].sort());
    expect(s.received.filter((f) => f.type === 'updates')).toEqual([]);

    const crisis = await probe.stop();
    expect(isAlive(relay.pid)).toBe(true);
    expect(memoryOf(relay.pid).peakMiB).toBeLessThan(300);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
  });
});
