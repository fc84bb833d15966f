// `npm run bench`: Keel's benchmarks on loopback. Figures go to stdout; nothing here is a test.
// KEEL_BENCH_ONLY=throughput|crisis|offline|handoff|padding runs one section; crisis.ts lists the crisis scenario's settings.
import { cryptoReady } from '@keel/engine';
import { crisisParamsFromEnv, runKeelCrisis, runReferenceCrisis } from './crisis.js';
import { formatCrisisReport } from './crisis-report.js';
import { formatHandoffReport, runHandoffBench } from './handoff.js';
import { runNewDeviceCatchUp, runOfflineReplay } from './offline.js';
import { formatPaddingReport, runPaddingBench } from './padding.js';
import { fmt, formatSummary } from '../support/stats.js';
import { runThroughput } from './throughput.js';

await cryptoReady();
const SECTIONS = ['throughput', 'crisis', 'offline', 'handoff', 'padding'] as const;
const only = process.env.KEEL_BENCH_ONLY;
if (only !== undefined && !(SECTIONS as readonly string[]).includes(only)) throw new Error(`KEEL_BENCH_ONLY must be one of ${SECTIONS.join(', ')}`);
const runs = (section: (typeof SECTIONS)[number]) => only === undefined || only === section;
// Settings are checked before anything runs, so a typo fails in a second, not after minutes.
const crisis = crisisParamsFromEnv();
const line = (s = '') => process.stdout.write(`${s}\n`);

line('# Keel benchmarks');
line(`node ${process.version}, ${new Date().toISOString()}; relay pinned to CPU 0, driver to CPU 1`);

if (runs('padding')) {
  line();
  line('## Padding: ciphertext bytes of a realistic edit mix, unpadded vs padded (power-of-two buckets ≥ 256 B; compression off)');
  for (const l of formatPaddingReport(runPaddingBench())) line(l);
}

if (runs('throughput')) {
  line();
  line('## Throughput: one update per envelope, writer → relay (SQLite commit) → reader');
  for (const sync of ['FULL', 'NORMAL'] as const) {
    const r = await runThroughput(20, 250, sync);
    line(
      `synchronous=${sync}: ${r.users} users × 2 devices, ${r.updates} updates in ${r.seconds.toFixed(2)} s → ` +
        `${Math.round(r.updatesPerSecond)} updates/s; relay CPU ${fmt(r.relayCpuMsPerUpdate)} ms/update; latency ${formatSummary(r.latency)}`,
    );
  }
}

if (runs('offline')) {
  line();
  line('## Offline recovery and new-device catch-up (relay pinned to CPU 0)');
  const replay = await runOfflineReplay();
  line(
    `replay of ${replay.updates} updates queued offline: all acknowledged ${fmt(replay.acknowledgedMs)} ms, all applied on the other device ` +
      `${fmt(replay.deliveredMs)} ms after reconnect (target < 1000 ms; floor 30 000 ms) → ${replay.deliveredMs < 1_000 ? 'met' : 'MISSED'}`,
  );
  const catchUp = await runNewDeviceCatchUp();
  line(
    `new device catch-up, ${catchUp.history}-update history: from the log ${fmt(catchUp.withoutSnapshotMs)} ms, ` +
      `from a snapshot ${fmt(catchUp.withSnapshotMs)} ms (${(catchUp.withoutSnapshotMs / catchUp.withSnapshotMs).toFixed(1)}× faster)`,
  );
}

if (runs('handoff')) {
  line();
  line('## Session handoff: breathing exercise captured on A → restorable on B (premium, 50 handoffs)');
  line(formatHandoffReport(await runHandoffBench()));
}

if (runs('crisis')) {
  line();
  line('## Crisis under load: safety-plan write A → applied on B while lower-tier traffic saturates the relay; Keel vs @y/websocket-server');
  const keel = await runKeelCrisis(crisis);
  const reference = await runReferenceCrisis(crisis);
  for (const l of formatCrisisReport(crisis, keel, reference)) line(l);
}
