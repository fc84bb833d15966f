// `npm run bench`: Keel's benchmarks on loopback. Figures go to stdout; nothing here is a test.
// KEEL_BENCH_ONLY=throughput|crisis runs one section; crisis.ts lists the crisis scenario's settings.
import { cryptoReady } from '@keel/engine';
import { crisisParamsFromEnv, runKeelCrisis, runReferenceCrisis } from './crisis.js';
import { formatCrisisReport } from './crisis-report.js';
import { fmt, formatSummary } from './stats.js';
import { runThroughput } from './throughput.js';

await cryptoReady();
const only = process.env.KEEL_BENCH_ONLY;
if (only !== undefined && only !== 'throughput' && only !== 'crisis') throw new Error('KEEL_BENCH_ONLY must be "throughput" or "crisis"');
// Settings are checked before anything runs, so a typo fails in a second, not after minutes.
const crisis = crisisParamsFromEnv();
const line = (s = '') => process.stdout.write(`${s}\n`);

line('# Keel benchmarks');
line(`node ${process.version}, ${new Date().toISOString()}; relay pinned to CPU 0, driver to CPU 1`);

if (only !== 'crisis') {
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

if (only !== 'throughput') {
  line();
  line('## Crisis under load: safety-plan write A → applied on B while lower-tier traffic saturates the relay; Keel vs @y/websocket-server');
  const keel = await runKeelCrisis(crisis);
  const reference = await runReferenceCrisis(crisis);
  for (const l of formatCrisisReport(crisis, keel, reference)) line(l);
}
