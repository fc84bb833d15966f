import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { openSqliteClientStore } from '@keel/client/node';
import { connectDevice, waitFor } from '../support/devices.js';
import { startProxy } from '../support/proxy.js';
import { removeRelayDir, startRelayProcess } from '../support/relay-process.js';

export interface ReplayResult {
  readonly updates: number;
  /** From reconnect to the last update acknowledged by the relay. */
  readonly acknowledgedMs: number;
  /** From reconnect to the last update applied on the user's other (online) device. */
  readonly deliveredMs: number;
}

/**
 * 10,000 updates queued while offline (a device with a SQLite store, five documents), then the
 * link comes back: how long until the relay has acknowledged all of them and the other device
 * has applied them. The client merges each document's queued updates before sealing (what the
 * offline queue limit asks for), so this measures the real replay path, not 10,000 round trips.
 */
export const runOfflineReplay = async (updates = 10_000): Promise<ReplayResult> => {
  const relay = await startRelayProcess({ cpu: 0 });
  const proxy = await startProxy(relay.port);
  const dir = mkdtempSync(join(tmpdir(), 'keel-bench-replay-'));
  const store = openSqliteClientStore(join(dir, 'a.db'));
  const id = await createIdentity();
  const a = await connectDevice(proxy.url, id, store);
  const b = await connectDevice(relay.url, await linkNewDevice(id));
  try {
    const specs = (['checkin', 'mood', 'history', 'profile', 'safety_plan'] as const).map((c, i) => ({ class: c, name: `bench-${i}` }));
    const docsA = await Promise.all(specs.map((s) => a.client.open(s)));
    const docsB = await Promise.all(specs.map((s) => b.client.open(s)));
    await Promise.all([a.client.whenSynced(), b.client.whenSynced()]);
    proxy.setOffline(true);
    await waitFor(() => a.client.status === 'offline', 5_000, 'offline');
    for (let i = 0; i < updates; i++) {
      docsA[i % docsA.length]!.getArray('e').push([i]);
      if (i % 100 === 99) await new Promise((resolve) => setImmediate(resolve));
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    const started = performance.now();
    proxy.setOffline(false);
    await a.client.flush();
    const acknowledgedMs = performance.now() - started;
    await waitFor(() => docsB.reduce((n, d) => n + d.getArray('e').length, 0) === updates, 30_000, 'all at B');
    return { updates, acknowledgedMs, deliveredMs: performance.now() - started };
  } finally {
    await a.client.close();
    await b.client.close();
    await store.close();
    await proxy.close();
    await relay.stop();
    removeRelayDir(relay.dir);
    rmSync(dir, { recursive: true, force: true });
  }
};

export interface CatchUpResult {
  readonly history: number;
  readonly withSnapshotMs: number;
  readonly withoutSnapshotMs: number;
}

/**
 * A document with a history of `history` separate updates (each its own envelope), then a new
 * device of the user opens it: time from open to synced, once from the raw log and once from a
 * snapshot the writer uploaded (the relay pruned the log it covers).
 */
export const runNewDeviceCatchUp = async (history = 10_000): Promise<CatchUpResult> => {
  const measure = async (withSnapshot: boolean): Promise<number> => {
    const relay = await startRelayProcess({ cpu: 0, env: { KEEL_RELAY_SNAPSHOT_RETENTION_MS: '0' } });
    const id = await createIdentity();
    const a = await connectDevice(relay.url, id, createMemoryStore(), { snapshotEvery: 0 });
    try {
      const spec = { class: 'history', name: 'long' } as const;
      const docA = await a.client.open(spec);
      await a.client.whenSynced();
      // One update per event-loop turn: each is sealed into its own envelope (premium sends at once).
      for (let i = 0; i < history; i++) {
        docA.getArray('e').push([i]);
        await new Promise((resolve) => setImmediate(resolve));
      }
      await a.client.flush();
      if (withSnapshot) await a.client.snapshot(spec);
      await new Promise((resolve) => setTimeout(resolve, 200));
      const c = await connectDevice(relay.url, await linkNewDevice(id), createMemoryStore(), { snapshotEvery: 0 });
      try {
        await c.client.whenSynced();
        const started = performance.now();
        const docC = await c.client.open(spec);
        await waitFor(() => docC.getArray('e').length === history, 60_000, 'history at the new device');
        return performance.now() - started;
      } finally {
        await c.client.close();
      }
    } finally {
      await a.client.close();
      await relay.stop();
      removeRelayDir(relay.dir);
    }
  };
  return { history, withoutSnapshotMs: await measure(false), withSnapshotMs: await measure(true) };
};
