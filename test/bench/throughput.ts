import { createIdentity, linkNewDevice } from '@keel/client';
import type * as Y from 'yjs';
import { connectDevice } from '../support/devices.js';
import { removeRelayDir, startRelayProcess } from '../support/relay-process.js';
import { processCpuSeconds } from './cpu.js';
import { type LatencySummary, summarize } from '../support/stats.js';

export interface ThroughputResult {
  readonly users: number;
  readonly updates: number;
  readonly seconds: number;
  readonly updatesPerSecond: number;
  readonly relayCpuMsPerUpdate: number;
  readonly latency: LatencySummary;
}

/**
 * Many users, each with a writer and a reader device, the writer making one update per event-loop
 * turn (each its own sealed, signed envelope). Measures committed-and-delivered updates per second
 * through the relay, write→applied latency, and the relay's CPU per update.
 */
export const runThroughput = async (users: number, updatesPerUser: number, synchronous: 'FULL' | 'NORMAL' = 'FULL'): Promise<ThroughputResult> => {
  const relay = await startRelayProcess({ cpu: 0, args: ['--synchronous', synchronous] });
  const latencies: number[] = [];
  const closers: (() => Promise<void>)[] = [];
  try {
    const pairs: { writer: Y.Doc; flush: () => Promise<void> }[] = [];
    let delivered = 0;
    for (let u = 0; u < users; u++) {
      const id = await createIdentity();
      const writer = await connectDevice(relay.url, id);
      const docW = await writer.client.open({ class: 'checkin', name: 'bench' });
      await writer.client.whenSynced();
      const reader = await connectDevice(relay.url, await linkNewDevice(id));
      const docR = await reader.client.open({ class: 'checkin', name: 'bench' });
      await reader.client.whenSynced();
      docR.getMap('m').observe((event) => {
        const now = performance.now();
        for (const key of event.keysChanged) {
          latencies.push(now - (docR.getMap('m').get(key) as number));
          delivered++;
        }
      });
      closers.push(() => writer.client.close(), () => reader.client.close());
      pairs.push({ writer: docW, flush: () => writer.client.flush() });
    }
    const cpuBefore = processCpuSeconds(relay.pid);
    const started = performance.now();
    const total = users * updatesPerUser;
    await Promise.all(
      pairs.map(async ({ writer, flush }, u) => {
        for (let i = 0; i < updatesPerUser; i++) {
          writer.getMap('m').set(`${u}:${i}`, performance.now());
          await new Promise((resolve) => setImmediate(resolve));
        }
        await flush();
      }),
    );
    const deadline = Date.now() + 60_000;
    while (delivered < total && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
    const seconds = (performance.now() - started) / 1000;
    const cpu = processCpuSeconds(relay.pid) - cpuBefore;
    return {
      users,
      updates: delivered,
      seconds,
      updatesPerSecond: delivered / seconds,
      relayCpuMsPerUpdate: (cpu * 1000) / Math.max(1, delivered),
      latency: summarize(latencies),
    };
  } finally {
    for (const close of closers) await close();
    await relay.stop();
    removeRelayDir(relay.dir);
  }
};
