import { createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { waitFor } from '../support/devices.js';
import { logRowsByDevice } from '../support/raw-device.js';
import type { RelayProcess } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

const relayWithRetention = (retentionMs: number): Promise<RelayProcess> =>
  scope.relay({ env: { KEEL_RELAY_SNAPSHOT_RETENTION_MS: String(retentionMs) } });

const rows = (relay: RelayProcess, doc: Parameters<typeof logRowsByDevice>[1]) =>
  [...logRowsByDevice(relay.dbPath, doc).values()].reduce((n, c) => n + c, 0);

describe('log compaction by snapshots', () => {
  it('prunes the relay log behind a snapshot; a new device starts from it and converges byte for byte', async () => {
    const relay = await relayWithRetention(0);
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA, createMemoryStore(), { snapshotEvery: 200 });
    const spec = { class: 'mood', name: 'journal' } as const;
    const docA = await a.client.open(spec);
    const docId = a.client.docId(spec);
    for (let i = 0; i < 450; i++) {
      docA.getArray('entries').push([i]);
      await a.client.flush();
    }
    await a.client.flush();
    // Snapshots went up at 200 and 400 entries; the log behind the latest one is gone.
    await waitFor(() => rows(relay, docId) <= 60, 5_000, 'log pruned behind the snapshot');
    expect(relay.output()).toContain('"msg":"snapshot stored"');

    const c = await scope.device(relay.url, await linkNewDevice(idA));
    const docC = await c.client.open(spec);
    await c.client.whenSynced();
    expect(docC.getArray('entries').length).toBe(450);
    expect(Y.encodeStateAsUpdate(docC)).toEqual(Y.encodeStateAsUpdate(docA));

    // Updates after the snapshot keep flowing both ways, counters intact.
    docC.getArray('entries').push(['from-c']);
    docA.getArray('entries').push(['from-a']);
    await Promise.all([a.client.flush(), c.client.flush()]);
    await waitFor(() => docA.getArray('entries').length === 452 && docC.getArray('entries').length === 452, 5_000, 'both ways');
    expect(Y.encodeStateAsUpdate(docC)).toEqual(Y.encodeStateAsUpdate(docA));
    expect([...a.errors, ...c.errors]).toEqual([]);
  });

  it('keeps covered entries during the retention window', async () => {
    const relay = await relayWithRetention(3_600_000);
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA);
    const spec = { class: 'profile', name: 'me' } as const;
    const docA = await a.client.open(spec);
    for (let i = 0; i < 30; i++) {
      docA.getMap('m').set(`k${i}`, i);
      await a.client.flush();
    }
    expect(await a.client.snapshot(spec)).toBe(30);
    await waitFor(() => relay.output().includes('"msg":"snapshot stored"'), 5_000, 'snapshot stored');
    expect(rows(relay, a.client.docId(spec))).toBe(30);
  });
});
