import { createIdentity, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { waitFor } from '../support/devices.js';
import { type NetworkProxy, startProxy } from '../support/proxy.js';
import { runRelayCli } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

describe('offline queue limit', () => {
  it('compacts 500 offline edits under a trial limit of 20 and delivers them all, byte for byte', async () => {
    const relay = await scope.relay({ defaultTier: 'trial' });
    const proxy: NetworkProxy = await startProxy(relay.port);
    scope.defer(() => proxy.close());
    const idA = await createIdentity();
    const a = await scope.device(proxy.url, idA);
    const specs = [
      { class: 'checkin', name: 'daily' },
      { class: 'mood', name: 'log' },
      { class: 'safety_plan', name: 'main' },
    ] as const;
    const docs = await Promise.all(specs.map((s) => a.client.open(s)));
    await a.client.whenSynced();
    expect(a.client.tier.policy.offlineQueueLimit).toBe(20);

    proxy.setOffline(true);
    await waitFor(() => a.client.status === 'offline', 5_000, 'offline');
    let peak = 0;
    for (let i = 0; i < 500; i++) {
      docs[i % 3]!.getArray('entries').push([`edit-${i}`]);
      await nextTurn();
      if (i % 50 === 49) {
        const pending = (await a.store.loadRange(['pending'])).length;
        peak = Math.max(peak, pending);
      }
    }
    await nextTurn();
    const pendingAtEnd = (await a.store.loadRange(['pending'])).length;
    // Compacted: far fewer stored entries than edits (one merged entry per document at rest).
    expect(peak).toBeLessThanOrEqual(20 + 3);
    expect(pendingAtEnd).toBeLessThanOrEqual(20);

    proxy.setOffline(false);
    await a.client.flush();
    // Trial keeps non-crisis data as a backup only; upgrade, then a new device reads everything.
    const set = await runRelayCli(['tier', 'set', idA.user.userId, 'premium', '--url', relay.httpUrl], {
      KEEL_RELAY_ADMIN_TOKEN: relay.adminToken,
    });
    expect(set.code).toBe(0);
    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const docsB = await Promise.all(specs.map((s) => b.client.open(s)));
    await b.client.whenSynced();
    await waitFor(() => docsB.reduce((n, d) => n + d.getArray('entries').length, 0) === 500, 5_000, 'all 500 edits at B');
    docs.forEach((d, i) => expect(Y.encodeStateAsUpdate(docsB[i]!)).toEqual(Y.encodeStateAsUpdate(d)));
    expect([...a.errors, ...b.errors]).toEqual([]);
  });
});
