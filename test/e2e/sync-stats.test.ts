import { createIdentity, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { startProxy } from '../support/proxy.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

describe('client.stats()', () => {
  it('counts what waits for the relay and measures a change’s way to the relay’s ack per document class', async () => {
    const relay = await scope.relay();
    const proxy = await startProxy(relay.port);
    scope.defer(() => proxy.close());
    const idA = await createIdentity();
    const a = await scope.device(proxy.url, idA);
    const plan = await a.client.open({ class: 'safety_plan', name: 'plan' });
    const mood = await a.client.open({ class: 'mood', name: 'today' });
    await a.client.whenSynced();
    expect(a.client.stats()).toEqual({ outboxDepth: 0, lastLatencyMs: {} });

    plan.getText('reasons').insert(0, 'my sister');
    await a.client.flush();
    const first = a.client.stats();
    expect(first.outboxDepth).toBe(0);
    expect(first.lastLatencyMs.safety_plan).toBeGreaterThanOrEqual(0);
    expect(first.lastLatencyMs.mood).toBeUndefined();

    // Offline: edits wait in the queue, and the time they wait is part of their latency.
    proxy.setOffline(true);
    await waitFor(() => a.client.status === 'offline', 10_000, 'offline');
    mood.getMap('mood').set('score', 4);
    plan.getText('reasons').insert(0, 'walks, ');
    const wroteAt = Date.now();
    await waitFor(() => a.client.stats().outboxDepth >= 2, 5_000, 'both changes queued');
    const offlineMs = 1_200;
    await new Promise((resolve) => setTimeout(resolve, offlineMs));
    expect(a.client.stats().outboxDepth).toBeGreaterThanOrEqual(2);
    proxy.setOffline(false);
    await a.client.flush();
    const waited = Date.now() - wroteAt;
    const after = a.client.stats();
    expect(after.outboxDepth).toBe(0);
    // At least the offline spell (a lower bound, not a speed claim), at most the whole wait.
    expect(after.lastLatencyMs.mood).toBeGreaterThanOrEqual(offlineMs);
    expect(after.lastLatencyMs.mood).toBeLessThanOrEqual(waited + 50);
    expect(after.lastLatencyMs.safety_plan).toBeGreaterThanOrEqual(offlineMs);

    // The other device sees the edits: nothing counted as acknowledged was lost.
    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const moodB = await b.client.open({ class: 'mood', name: 'today' });
    await b.client.whenSynced();
    await waitFor(() => moodB.getMap('mood').get('score') === 4, 5_000, 'mood at B');
    expect(a.errors.filter((e) => e.code !== 'LINK_DEAD')).toEqual([]);
  });
});
