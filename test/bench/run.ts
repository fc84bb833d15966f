// `npm run bench`: Keel's benchmarks on loopback. Figures go to stdout; nothing here is a test.
import { cryptoReady } from '@keel/engine';
import { fmt, formatSummary } from './stats.js';
import { runThroughput } from './throughput.js';

await cryptoReady();
const line = (s = '') => process.stdout.write(`${s}\n`);

line('# Keel benchmarks');
line(`node ${process.version}, ${new Date().toISOString()}; relay pinned to CPU 0, driver to CPU 1`);
line();
line('## Throughput: one update per envelope, writer → relay (SQLite commit) → reader');
for (const sync of ['FULL', 'NORMAL'] as const) {
  const r = await runThroughput(20, 250, sync);
  line(
    `synchronous=${sync}: ${r.users} users × 2 devices, ${r.updates} updates in ${r.seconds.toFixed(2)} s → ` +
      `${Math.round(r.updatesPerSecond)} updates/s; relay CPU ${fmt(r.relayCpuMsPerUpdate)} ms/update; latency ${formatSummary(r.latency)}`,
  );
}
