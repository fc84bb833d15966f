import { readFileSync } from 'node:fs';
import { type Identity, createIdentity, linkNewDevice } from '@keel/client';
import type * as Y from 'yjs';
import { type Device, waitFor } from './devices.js';
import type { TestScope } from './scope.js';
import { percentile } from './stats.js';

/** Write → applied latencies of an honest user's crisis edits, and what never arrived. */
export interface CrisisStats {
  readonly sent: number;
  readonly received: number;
  /** Edits written but not applied on the other device by the end of the grace period. */
  readonly lost: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

export interface CrisisProbe {
  /** The probe's two devices: A writes, B applies (a test may open more documents on them). */
  readonly devices: { readonly a: Device; readonly b: Device };
  /** Latencies so far (ms), in arrival order. */
  readonly latencies: readonly number[];
  /**
   * Stops writing, waits up to `graceMs` for the last edits, and summarises. An attack that
   * finishes quickly would leave nothing measured, so the probe first keeps writing until at
   * least `minEdits` edits are out (20 by default, a second at the default interval).
   */
  stop(graceMs?: number): Promise<CrisisStats>;
}

/**
 * An honest user with two devices (the real client SDK, in this process) editing their safety
 * plan — crisis class, the lane nothing may delay — every `intervalMs`, timing each edit from
 * the write on device A to its application on device B. Used while an attack runs against the
 * same relay: the numbers are what the attack did to someone else's crisis data.
 *
 * Its devices share the test's event loop, so a test starts it after its own heavy setup
 * (sealing hundreds of frames, deriving key chains): a synchronous stall here would be timed
 * as crisis latency the relay never caused.
 */
export const startCrisisProbe = async (
  scope: TestScope,
  url: string,
  options: {
    readonly intervalMs?: number;
    readonly maxEdits?: number;
    readonly minEdits?: number;
    readonly identity?: Identity;
  } = {},
): Promise<CrisisProbe> => {
  const intervalMs = options.intervalMs ?? 50;
  const maxEdits = options.maxEdits ?? 2_000;
  const minEdits = Math.min(options.minEdits ?? 20, maxEdits);
  // A given user's crisis edits (a test attacking that very user), or a new user's.
  const identity = options.identity ?? (await createIdentity());
  const a = await scope.device(url, identity);
  const b = await scope.device(url, await linkNewDevice(identity));
  const docA: Y.Doc = await a.client.open({ class: 'safety_plan', name: 'probe' });
  const docB: Y.Doc = await b.client.open({ class: 'safety_plan', name: 'probe' });
  await Promise.all([a.client.whenSynced(), b.client.whenSynced()]);
  // Warm up both ends (JIT, key derivation, first subscriptions): the first edits of a fresh
  // client are slower for reasons that have nothing to do with the relay's load.
  for (let i = 0; i < 10; i++) {
    docA.getMap('warmup').set(`w${i}`, i);
    await waitFor(() => docB.getMap('warmup').get(`w${i}`) === i, 5_000, 'warm-up edit');
  }
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  docB.getMap('probe').observe((event) => {
    const now = performance.now();
    for (const key of event.keysChanged) {
      const at = sentAt.get(key);
      if (at === undefined) continue;
      sentAt.delete(key);
      latencies.push(now - at);
    }
  });
  let sent = 0;
  const timer = setInterval(() => {
    if (sent >= maxEdits) return;
    const key = `e${sent++}`;
    sentAt.set(key, performance.now());
    docA.getMap('probe').set(key, sent);
  }, intervalMs);
  scope.defer(() => clearInterval(timer));

  return {
    devices: { a, b },
    latencies,
    async stop(graceMs = 2_000) {
      // Bounded: the interval keeps firing unless this process is stalled for good.
      const writing = Date.now() + minEdits * intervalMs + 10_000;
      while (sent < minEdits && Date.now() < writing) await new Promise((resolve) => setTimeout(resolve, intervalMs));
      clearInterval(timer);
      if (sent === 0) throw new Error('the crisis probe wrote no edit: nothing was measured');
      const deadline = Date.now() + graceMs;
      while (sentAt.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
      const sorted = [...latencies].sort((x, y) => x - y);
      return {
        sent,
        received: latencies.length,
        lost: sentAt.size,
        p50: Math.round(percentile(sorted, 50) * 10) / 10,
        p99: Math.round(percentile(sorted, 99) * 10) / 10,
        max: Math.round((sorted.at(-1) ?? Number.NaN) * 10) / 10,
      };
    },
  };
};

/** Resident and peak resident memory of a process, in MiB (Linux /proc). */
export const memoryOf = (pid: number): { readonly rssMiB: number; readonly peakMiB: number } => {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rssMiB: Math.round(kib('VmRSS') / 1024), peakMiB: Math.round(kib('VmHWM') / 1024) };
};

/** Whether a process is still running. */
export const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
