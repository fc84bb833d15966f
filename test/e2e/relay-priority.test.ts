import { createIdentity, linkNewDevice } from '@keel/client';
import { afterEach, describe, expect, it } from 'vitest';
import { connectDevice, waitFor, type Device } from '../support/devices.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../support/relay-process.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('relay outbound priority', () => {
  it('delivers a crisis update ahead of a large bulk catch-up already queued for the device', async () => {
    const relay: RelayProcess = await startRelayProcess();
    cleanups.push(async () => {
      await relay.stop();
      removeRelayDir(relay.dir);
    });
    const idA = await createIdentity();
    const track = (d: Device) => {
      cleanups.push(() => d.client.close());
      return d;
    };
    const a = track(await connectDevice(relay.url, idA));
    const historyA = await a.client.open({ class: 'history', name: 'journal' });
    const planA = await a.client.open({ class: 'safety_plan', name: 'main' });
    // About 8 MB of history: 400 envelopes of ~20 KB each.
    for (let i = 0; i < 400; i++) {
      historyA.getArray('entries').push([`${i}:${'x'.repeat(20_000)}`]);
      await a.client.flush();
    }

    const b = track(await connectDevice(relay.url, await linkNewDevice(idA)));
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
