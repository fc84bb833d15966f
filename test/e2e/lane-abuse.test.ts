import { randomBytes } from 'node:crypto';
import { createIdentity, linkNewDevice } from '@keel/client';
import { ErrorCode } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { connectRawDevice, docRef, mapUpdate, sealFor } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/**
 * Step 8: the lane an envelope claims is signed by its author but chosen by it, and the relay
 * cannot check it (the class is hidden). A modified client of the user labels bulk data as
 * crisis to skip every quota and to get cross-device sync on trial; the user's other devices
 * know each document's class, and refuse what sits above its ceiling.
 */
describe('lanes a receiving device checks', () => {
  const scope = useTestScope();

  it('refuses a bulk document pushed on the crisis lane, not applied nor staged, and the author’s next honest update still applies', async () => {
    const relay = await scope.relay();
    const user = await createIdentity();
    const phone = await scope.device(relay.url, user);
    const modified = await linkNewDevice(user);
    const history = await phone.client.open({ class: 'history', name: 'bulk' });
    const assessment = await phone.client.open({ class: 'assessment', name: 'phq9' });
    const plan = await phone.client.open({ class: 'safety_plan', name: 'main' });
    await phone.client.whenSynced();

    const raw = await connectRawDevice(relay.url, modified);
    scope.defer(() => raw.close());
    const bulk = { ...docRef(user, 'history', 'bulk'), lane: 10 as const };
    // Above 'assessment''s ceiling (9) by one; then the author's next update on an honest lane.
    const overAssessment = { ...docRef(user, 'assessment', 'phq9'), lane: 10 as const };
    const honestAssessment = { ...docRef(user, 'assessment', 'phq9'), lane: 9 as const };
    const stolen = mapUpdate('stolen', randomBytes(48 * 1024).toString('base64'));
    raw.send(JSON.stringify({ type: 'push', envs: [sealFor(modified, bulk, 1, stolen), sealFor(modified, overAssessment, 1, mapUpdate('first', 1))] }));
    await raw.next((f) => f.type === 'ack' && f.acks.length === 2, 5_000);
    // On trial only crisis lanes cross devices: the relay, which cannot tell, forwards both.
    await waitFor(() => phone.errors.filter((e) => e.code === ErrorCode.LANE_MISMATCH).length === 2, 5_000, 'both refusals');
    raw.send(JSON.stringify({ type: 'push', envs: [sealFor(modified, honestAssessment, 2, mapUpdate('second', 2))] }));
    await waitFor(() => assessment.getMap('m').get('second') === 2, 5_000, 'the honest update after the refused one');

    expect(history.getMap('m').get('stolen')).toBeUndefined();
    expect(assessment.getMap('m').get('first')).toBeUndefined();
    expect(phone.client.stagedCount({ class: 'history', name: 'bulk' })).toBe(0);
    expect(phone.client.stagedCount({ class: 'assessment', name: 'phq9' })).toBe(0);
    const refusals = phone.errors.filter((e) => e.code === ErrorCode.LANE_MISMATCH);
    expect(refusals.map((e) => e.doc).sort()).toEqual([bulk.id, overAssessment.id].sort());
    // No refetch loop: the refused update counts as seen, so nothing is asked for again.
    expect(phone.errors.filter((e) => e.code === ErrorCode.COUNTER_GAP)).toEqual([]);

    // A real crisis edit of the user still crosses at once.
    const laptop = await scope.device(relay.url, await linkNewDevice(user));
    const planB = await laptop.client.open({ class: 'safety_plan', name: 'main' });
    await laptop.client.whenSynced();
    const t0 = performance.now();
    plan.getMap('plan').set('step', 'call 988');
    await waitFor(() => planB.getMap('plan').get('step') === 'call 988', 5_000, 'the crisis edit');
    expect(performance.now() - t0).toBeLessThan(1_000);
  });
});
