import { randomBytes } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createIdentity, serializeIdentity } from '@keel/client';
import { type Envelope, WireLimits, certifyDevice, createEpochRecord, generateDeviceKeys, generateEpochSecret, maxPartPayloadBytes } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import type { SocketPlan } from '../support/attacker-plan.js';
import { startAttacker, startHonestUsers } from '../support/attacker-process.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { connectRawDevice, docRef, flipBit, sealFor } from '../support/raw-device.js';
import { errorLinesBesidesCrisisAlerts } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';
import { percentile } from '../support/stats.js';

/** How long the mixed attack runs (ms): a minute in CI, shorter with KEEL_SOAK_MS for local runs. */
const SOAK_MS = Number(process.env.KEEL_SOAK_MS ?? 60_000);
const SEED = Number(process.env.KEEL_SOAK_SEED ?? 20261126);

/** mulberry32: a small, seeded PRNG, so a failing soak can be replayed with its seed. */
const rng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};


/**
 * Step 5's soak: every attack of the step at once, against one relay process, for a minute,
 * while honest users edit crisis and bulk documents on two devices each. Nothing acknowledged
 * may be lost, the relay may not crash, and honest crisis edits must arrive under 200 ms (p99)
 * throughout. Seeded: KEEL_SOAK_SEED replays a run.
 */
describe('soak: every attack at once, honest users throughout', () => {
  const scope = useTestScope();

  it(
    `runs ${SOAK_MS / 1000} s: no acknowledged update lost, no crash, honest crisis p99 < 200 ms`,
    async () => {
      const random = rng(SEED);
      const relay = await scope.relay({ env: { KEEL_RELAY_MAX_EPOCHS_PER_USER: '64' }, ...(process.env.KEEL_PROFILE_DIR ? { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${process.env.KEEL_PROFILE_DIR}`] } : {}) });

      // ── honest users: crisis edits timed here; bulk writers (up to 3 MiB) in their own process ──
      const probes = [];
      for (let u = 0; u < 3; u++) probes.push(await startCrisisProbe(scope, relay.url, { intervalMs: 50, maxEdits: 100_000 }));
      const writers = await startHonestUsers(scope, { url: relay.url, users: 3, durationMs: SOAK_MS, intervalMs: 100, largeShare: 0.1, seed: SEED });

      // ── the attackers' material, made here, sent from their own processes ──
      const mallory = await createIdentity();
      const bigDoc = docRef(mallory, 'history', 'big');
      const writer = await connectRawDevice(relay.url, mallory);
      scope.defer(() => writer.close());
      let bigCounter = 0;
      for (let i = 0; i < 12; i++) {
        writer.sendFrame({ type: 'push', envs: [sealFor(mallory, bigDoc, ++bigCounter, randomBytes(maxPartPayloadBytes(1024 * 1024)))] });
        await writer.next((f) => f.type === 'ack' && f.acks.some((x) => x.counter === bigCounter), 10_000);
      }
      // Devices of Mallory's own to wrap epochs for and to register.
      const epochRecipients = new Map([[mallory.device.deviceId, mallory.device.publicKey]]);
      for (let i = 0; i < 8; i++) {
        const keys = generateDeviceKeys();
        writer.sendFrame({ type: 'register', cert: certifyDevice(mallory.user, mallory.device, keys.publicKey, Date.now()) });
        await writer.next((f) => f.type === 'device' && f.cert.device === keys.deviceId, 5_000);
        epochRecipients.set(keys.deviceId, keys.publicKey);
      }
      await writer.close();
      const auth = serializeIdentity(mallory);
      const crisisDoc = docRef(mallory, 'crisis_contacts', 'flood');
      const resend = JSON.stringify({
        type: 'push',
        envs: [...Array.from({ length: 300 }, (_, i) => sealFor(mallory, docRef(mallory, 'checkin', 'resend'), i + 1, randomBytes(512))), sealFor(mallory, crisisDoc, 1, randomBytes(64))],
      });
      const forged: Envelope = sealFor(mallory, docRef(mallory, 'checkin', 'forged'), 1, randomBytes(256));
      const badFrames = [JSON.stringify({ type: 'push', envs: [{ ...forged, ct: flipBit(forged.ct, 9) }] }), 'not json', '{"type":"nope"}'];
      let crisisCounter = 1;
      const crisisFlood = Array.from({ length: 20 }, () =>
        JSON.stringify({ type: 'push', envs: Array.from({ length: 64 }, () => sealFor(mallory, crisisDoc, ++crisisCounter, randomBytes(1024))) }),
      );
      const epochs = Array.from({ length: 80 }, (_, i) =>
        JSON.stringify({ type: 'epoch', record: createEpochRecord(mallory.user.userId, i + 1, mallory.device, generateEpochSecret(), epochRecipients, Date.now()) }),
      );
      const pairings = Array.from({ length: 10 }, (_, i) => JSON.stringify({ type: 'pair-open', id: `soak${String(i).padStart(12, '0')}`, ttlMs: 60_000 }));
      const amplify = JSON.stringify({ type: 'sub', docs: Array.from({ length: WireLimits.maxDocsPerSubscribe }, () => ({ doc: bigDoc.id, after: 0 })) });
      const manyDocs = JSON.stringify({ type: 'sub', docs: Array.from({ length: WireLimits.maxDocsPerSubscribe }, (_, i) => ({ doc: docRef(mallory, 'history', `s${i}`).id, after: 0 })) });
      let bulkCounter = bigCounter;
      const bigFrames = Array.from({ length: 16 }, () => JSON.stringify({ type: 'push', envs: [sealFor(mallory, bigDoc, ++bulkCounter, randomBytes(maxPartPayloadBytes(1024 * 1024)))] }));

      // Every attack of the step, picked and ordered by the seed.
      const menu: (() => SocketPlan)[] = [
        () => ({ frames: [{ junk: 8 * 1024 * 1024 }] }), // 1: a big frame before authentication
        () => ({ frames: [], hold: 4_000 }), // 1: an idle unauthenticated socket
        () => ({ frames: ['{"type":"sub","docs":[]}', '{"type":"push","envs":[]}'], hold: false }), // 1: frames before hello
        () => ({ auth, frames: [amplify, manyDocs, ...Array.from({ length: 20 }, () => amplify)], read: false, hold: 5_000 }), // 2
        () => ({ auth, frames: [resend], rounds: 200 }), // 3: crisis-lane resend flood
        () => ({ auth, frames: crisisFlood, hold: 1_000 }), // 3: new crisis-lane envelopes
        () => ({ auth, frames: epochs, hold: 1_000 }), // 5: epoch records past the cap
        () => ({ auth, frames: pairings, hold: 1_000 }), // 5: pairing codes past the cap
        () => ({ auth, frames: badFrames, rounds: 20 }), // 8: bad frames until closed
        () => ({ auth, frames: bigFrames, hold: 1_000 }), // the largest frames allowed
      ];
      const plans = () => Array.from({ length: 10 }, () => menu[Math.floor(random() * menu.length)]!());
      const attackers = await Promise.all(
        // From addresses of their own (the relay limits new connections per address): the honest
        // users' address is not the attackers' to exhaust.
        [2, 3, 4].map((host) => startAttacker(scope, { url: relay.url, localAddress: `127.0.0.${host}`, sockets: plans(), waves: 1_000, durationMs: SOAK_MS })),
      );

      // ── the attacks run for SOAK_MS; the relay's memory is sampled meanwhile ──
      // This process's own loop is watched too: a late observer makes a crisis edit look late.
      const ownLoop = monitorEventLoopDelay({ resolution: 10 });
      ownLoop.enable();
      scope.defer(() => void ownLoop.disable());
      const started = Date.now();
      let memoryPeak = 0;
      while (Date.now() - started < SOAK_MS) {
        memoryPeak = Math.max(memoryPeak, memoryOf(relay.pid).rssMiB);
        await new Promise((resolve) => setTimeout(resolve, 1_000));
      }
      const reports = await Promise.all(attackers.map((attacker) => attacker.stop()));
      const crisis = await Promise.all(probes.map((probe) => probe.stop(5_000)));
      // ── nothing lost: every honest device flushed, and both devices of each user hold the same bytes ──
      const bulk = await writers.done;
      const latencies = probes.flatMap((probe) => [...probe.latencies]);
      const sorted = latencies.sort((x, y) => x - y);
      const summary = {
        seed: SEED,
        seconds: SOAK_MS / 1000,
        crisisEdits: latencies.length,
        crisisLost: crisis.reduce((n, c) => n + c.lost, 0),
        p50: Math.round(percentile(sorted, 50) * 10) / 10,
        p99: Math.round(percentile(sorted, 99) * 10) / 10,
        max: Math.round((sorted.at(-1) ?? 0) * 10) / 10,
        bulkEdits: bulk.edits,
        bulkMiB: Math.round(bulk.bytes / 1024 / 1024),
        honestLoopMaxMs: bulk.loopMaxMs,
        relayRssPeakMiB: Math.max(memoryPeak, memoryOf(relay.pid).peakMiB),
        testLoopMaxMs: Math.round(ownLoop.max / 1e6),
        relayLoopStalls: [...relay.output().matchAll(/"msg":"event loop stalled","maxMs":(\d+)/g)].map((m) => Number(m[1])),
        crisisAlerts: [...relay.output().matchAll(/"msg":"alert: (crisis_\w+)"/g)].length,
        // As the relay measured them (push read → receipt): beside the probe's own (write → applied),
        // they say whether a slow edit was slow inside the relay or before it.
        // [end to end, of which inside the relay, whether it waited for a catch-up] per breach.
        relayMeasuredBreaches: [...relay.output().matchAll(/"msg":"alert: crisis_sla_breach".*?"latencyMs":(\d+),"relayMs":(\d+),"heldForCatchUp":(true|false)/g)].map((m) => [Number(m[1]), Number(m[2]), m[3] === 'true']),
        slowestMs: sorted.slice(-3).map((ms) => Math.round(ms)),
        probeErrors: probes.flatMap((p) => [...p.devices.a.errors, ...p.devices.b.errors]).map((e) => e.code),
        attackerSockets: reports.reduce((n, r) => n + r.opened, 0),
        attackerFrames: reports.reduce((n, r) => n + r.sent, 0),
        closes: reports.reduce<Record<string, number>>((all, r) => {
          for (const [code, n] of Object.entries(r.closes)) all[code] = (all[code] ?? 0) + n;
          return all;
        }, {}),
      };
      console.info('soak', summary, bulk.errors.slice(0, 3));
      expect(summary.crisisLost).toBe(0);
      expect(crisis.reduce((n, c) => n + c.sent, 0)).toBe(latencies.length);
      expect(bulk.converged).toBe(true);
      expect(bulk.errors).toEqual([]);
      expect(summary.p99).toBeLessThan(200);
      expect(isAlive(relay.pid)).toBe(true);
      // No error line but the crisis SLA's own alerts: a receipt later than 200 ms under a minute of
      // every attack at once is what those are for (p99 is the bound; the slowest 1 % may alert).
      expect(errorLinesBesidesCrisisAlerts(relay.output())).toEqual([]);
      expect(summary.relayRssPeakMiB).toBeLessThan(768);
    },
    SOAK_MS + 120_000,
  );
});
