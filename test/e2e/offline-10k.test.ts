import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createIdentity, linkNewDevice } from '@keel/client';
import { openSqliteClientStore } from '@keel/client/node';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { connectDevice, waitFor } from '../support/devices.js';
import { startProxy } from '../support/proxy.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

const SPECS = [
  { class: 'safety_plan', name: 'main' },
  { class: 'checkin', name: 'daily' },
  { class: 'mood', name: 'journal' },
  { class: 'history', name: 'sessions' },
  { class: 'profile', name: 'me' },
] as const;
const EDITS = 10_000;

describe('a long offline stretch', () => {
  it('keeps 10,000 offline edits through a process restart, converges, and delivers crisis edits first', async () => {
    const relay = await scope.relay();
    const proxy = await startProxy(relay.port);
    scope.defer(() => proxy.close());
    const dir = mkdtempSync(join(tmpdir(), 'keel-10k-'));
    scope.defer(() => rmSync(dir, { recursive: true, force: true }));
    const dbPath = join(dir, 'device-a.db');

    const idA = await createIdentity();
    const store1 = openSqliteClientStore(dbPath);
    const a1 = await connectDevice(proxy.url, idA, store1);
    const docs1 = await Promise.all(SPECS.map((s) => a1.client.open(s)));
    await a1.client.whenSynced();
    const b = await connectDevice(relay.url, await linkNewDevice(idA));
    scope.defer(() => b.client.close());
    const docsB = await Promise.all(SPECS.map((s) => b.client.open(s)));
    await b.client.whenSynced();

    proxy.setOffline(true);
    await waitFor(() => a1.client.status === 'offline', 5_000, 'A offline');
    // Half the edits, then the process "exits" and comes back, still offline, for the rest.
    for (let i = 0; i < EDITS / 2; i++) {
      docs1[i % SPECS.length]!.getArray('e').push([i]);
      if (i % 10 === 9) await new Promise((resolve) => setImmediate(resolve));
    }
    await a1.client.close();
    await store1.close();

    const store2 = openSqliteClientStore(dbPath);
    scope.defer(() => store2.close());
    const a2 = await connectDevice(proxy.url, idA, store2);
    scope.defer(() => a2.client.close());
    const docsA = await Promise.all(SPECS.map((s) => a2.client.open(s)));
    expect(docsA.reduce((n, d) => n + d.getArray('e').length, 0)).toBe(EDITS / 2);
    for (let i = EDITS / 2; i < EDITS; i++) {
      docsA[i % SPECS.length]!.getArray('e').push([i]);
      if (i % 10 === 9) await new Promise((resolve) => setImmediate(resolve));
    }

    // B records when each document is complete.
    const completeAt = new Map<number, number>();
    const perDoc = EDITS / SPECS.length;
    docsB.forEach((d, i) =>
      d.on('update', () => {
        if (!completeAt.has(i) && d.getArray('e').length === perDoc) completeAt.set(i, performance.now());
      }),
    );
    proxy.setOffline(false);
    await a2.client.flush();
    await waitFor(() => completeAt.size === SPECS.length, 20_000, 'every document complete at B');
    docsA.forEach((d, i) => expect(Y.encodeStateAsUpdate(docsB[i]!)).toEqual(Y.encodeStateAsUpdate(d)));
    const crisisAt = completeAt.get(0)!;
    for (let i = 1; i < SPECS.length; i++) expect(crisisAt).toBeLessThanOrEqual(completeAt.get(i)!);
    expect([...a2.errors, ...b.errors]).toEqual([]);
  });
});
