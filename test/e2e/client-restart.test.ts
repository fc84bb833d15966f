import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createIdentity, linkNewDevice, parseIdentity, serializeIdentity } from '@keel/client';
import { openSqliteClientStore } from '@keel/client/node';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { connectDevice, waitFor } from '../support/devices.js';
import { type NetworkProxy, startProxy } from '../support/proxy.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

describe('a device process restarting while offline', () => {
  it('keeps sealed-but-unacknowledged and never-sealed edits, and sends them after reconnect', async () => {
    const relay = await scope.relay();
    const proxy: NetworkProxy = await startProxy(relay.port);
    scope.defer(() => proxy.close());
    const dir = mkdtempSync(join(tmpdir(), 'keel-device-'));
    scope.defer(() => rmSync(dir, { recursive: true, force: true }));
    const dbPath = join(dir, 'device.db');

    const identity = await createIdentity();
    const saved = serializeIdentity(identity);
    const store1 = openSqliteClientStore(dbPath);
    const a1 = await connectDevice(proxy.url, identity, store1);
    const doc1 = await a1.client.open({ class: 'breathing_session', name: 'today' });
    await a1.client.whenSynced();
    doc1.getMap('session').set('phase', 'inhale');
    await a1.client.flush();

    // The link looks alive but nothing reaches the relay: these get sealed into the outbox.
    proxy.setBlackhole(true);
    doc1.getMap('session').set('phase', 'hold');
    doc1.getArray('log').push(['sealed-while-blackholed']);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(a1.client.status).not.toBe('offline');
    expect((await store1.loadRange(['outbox'])).length, 'sealed, unacknowledged envelopes').toBeGreaterThan(0);
    // Now truly offline: these stay pending (unsealed).
    proxy.setBlackhole(false);
    proxy.setOffline(true);
    await waitFor(() => a1.client.status === 'offline', 5_000, 'offline');
    for (let i = 0; i < 100; i++) doc1.getArray('log').push([`offline-${i}`]);
    const expected = Y.encodeStateAsUpdate(doc1);
    const expectedLog = doc1.getArray('log').toArray();
    // The process "exits": client and store closed, only the file remains.
    await a1.client.close();
    expect((await store1.loadRange(['pending'])).length, 'never-sealed local updates').toBeGreaterThan(0);
    await store1.close();

    const store2 = openSqliteClientStore(dbPath);
    scope.defer(() => store2.close());
    const a2 = await scope.device(proxy.url, await parseIdentity(saved), store2);
    const doc2 = await a2.client.open({ class: 'breathing_session', name: 'today' });
    // Loaded from disk before any network: local-first.
    expect(doc2.getArray('log').toArray()).toEqual(expectedLog);
    expect(Y.encodeStateAsUpdate(doc2)).toEqual(expected);

    proxy.setOffline(false);
    await a2.client.flush();
    const b = await scope.device(relay.url, await linkNewDevice(identity));
    const docB = await b.client.open({ class: 'breathing_session', name: 'today' });
    await waitFor(() => docB.getArray('log').length === expectedLog.length, 5_000, 'everything at device B');
    expect(docB.getArray('log').toArray()).toEqual(expectedLog);
    expect(docB.getMap('session').get('phase')).toBe('hold');
    expect([...a2.errors, ...b.errors]).toEqual([]);
  });
});
