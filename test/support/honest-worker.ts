/**
 * Honest users in their own process (forked by honest-process.ts): two devices each, real
 * clients, writing documents of every size for a while, then flushing and checking that both
 * devices hold the same bytes. Kept out of the test's process so their work (sealing and
 * opening multi-MiB updates) does not sit in the event loop that times crisis edits.
 */
import { randomBytes } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { createNodeClient } from '@keel/client/node';
import * as Y from 'yjs';
import type { HonestPlan, HonestReport } from './honest-plan.js';

const rng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const run = async (plan: HonestPlan): Promise<HonestReport> => {
  const random = rng(plan.seed);
  const report: HonestReport = { edits: 0, bytes: 0, converged: true, errors: [], loopMaxMs: 0 };
  const loop = monitorEventLoopDelay({ resolution: 20 });
  loop.enable();
  const connect = async (identity: Awaited<ReturnType<typeof createIdentity>>) => {
    const client = await createNodeClient({ url: plan.url, identity, storage: createMemoryStore(), backoff: { baseMs: 50, maxMs: 500 } });
    client.on('error', (e) => {
      if (report.errors.length < 20) report.errors.push(`${e.code}: ${e.message} (loop max so far ${Math.round(loop.max / 1e6)} ms)`);
    });
    return client;
  };
  const users = [];
  for (let u = 0; u < plan.users; u++) {
    const identity = await createIdentity();
    const a = await connect(identity);
    const b = await connect(await linkNewDevice(identity));
    const specs = [
      { class: 'history', name: 'archive' },
      { class: 'checkin', name: 'daily' },
      { class: 'assessment', name: 'mood' },
    ] as const;
    const docs = [];
    for (const spec of specs) docs.push({ a: await a.open(spec), b: await b.open(spec) });
    users.push({ a, b, docs });
  }
  const deadline = Date.now() + plan.durationMs;
  while (Date.now() < deadline) {
    for (const user of users) {
      const doc = user.docs[Math.floor(random() * user.docs.length)]!;
      const side = random() < 0.5 ? doc.a : doc.b;
      // Mostly small edits; one in ten up to 3 MiB (several parts at the relay's 1 MiB frames).
      const size = random() < plan.largeShare ? Math.floor(random() * 3 * 1024 * 1024) : Math.floor(random() * 8 * 1024);
      side.getMap('bulk').set(`e${report.edits}`, new Uint8Array(randomBytes(size)));
      report.edits++;
      report.bytes += size;
    }
    await sleep(plan.intervalMs);
  }
  for (const user of users) await Promise.all([user.a.flush(), user.b.flush()]);
  const settle = Date.now() + 60_000;
  for (const user of users) {
    for (const doc of user.docs) {
      const same = () => Buffer.from(Y.encodeStateAsUpdate(doc.a)).equals(Buffer.from(Y.encodeStateAsUpdate(doc.b)));
      while (!same() && Date.now() < settle) await sleep(50);
      if (!same()) report.converged = false;
    }
  }
  for (const user of users) await Promise.all([user.a.close(), user.b.close()]);
  loop.disable();
  report.loopMaxMs = Math.round(loop.max / 1e6);
  return report;
};

process.on('message', (message: { type: 'start'; plan: HonestPlan }) => {
  if (message.type !== 'start') return;
  run(message.plan).then(
    (report) => process.send?.({ type: 'done', report }),
    (error: unknown) => process.send?.({ type: 'done', report: { edits: 0, bytes: 0, converged: false, errors: [String(error)], loopMaxMs: 0 } }),
  );
});
process.send?.({ type: 'ready' });
