import { createIdentity, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

describe('relay outbound priority', () => {
  it('delivers a crisis update ahead of a large bulk catch-up already queued for the device', async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA);
    const historyA = await a.client.open({ class: 'history', name: 'journal' });
    const planA = await a.client.open({ class: 'safety_plan', name: 'main' });
    // About 8 MB of history: 400 envelopes of ~20 KB each.
    for (let i = 0; i < 400; i++) {
      historyA.getArray('entries').push([`${i}:${'x'.repeat(20_000)}`]);
      await a.client.flush();
    }

    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const planB = await b.client.open({ class: 'safety_plan', name: 'main' });
    await b.client.whenSynced();
    const historyB = await b.client.open({ class: 'history', name: 'journal' });
    // B's catch-up of the history is now queued at the relay; a crisis edit arrives meanwhile.
    await waitFor(() => historyB.getArray('entries').length > 0, 5_000, 'catch-up started');
    planA.getMap('plan').set('call', '988');
    let historyAtCrisis = -1;
    planB.getMap('plan').observe(() => {
      if (historyAtCrisis < 0) historyAtCrisis = historyB.getArray('entries').length;
    });
    await waitFor(() => planB.getMap('plan').get('call') === '988', 5_000, 'crisis edit at B');
    await waitFor(() => historyB.getArray('entries').length === 400, 20_000, 'history complete');
    // The crisis edit overtook the rest of the backlog.
    expect(historyAtCrisis).toBeGreaterThanOrEqual(0);
    expect(historyAtCrisis).toBeLessThan(400);
  });
});
