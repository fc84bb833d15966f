import { type CrisisParams, type CrisisResult, type CrisisRun, type LoadFigures, STOP_TIMEOUT_MS } from './crisis.js';
import { fmt, formatSummary } from '../support/stats.js';

/** docs/design.md: Keel aims at crisis p99 < 50 ms on loopback while the relay is saturated by lower-tier traffic… */
export const CRISIS_P99_TARGET_MS = 50;
/** …and the crisis lane keeps it within 2× of its unloaded p99. */
export const CRISIS_LOADED_RATIO_TARGET = 2;
/** The floor: a crisis update's SLA, A → B. */
export const CRISIS_SLA_MS = 200;
/** A loaded run whose relay used less of its core than this, and confirmed most of the load, was not saturated. */
const SATURATED_CPU_SHARE = 0.9;
const SLOWEST_SHOWN = 5;

const ratio = (a: number, b: number): string => {
  const r = a / b;
  if (!Number.isFinite(r)) return '—';
  return r >= 100 ? `${Math.round(r)}×` : `${r.toPrecision(3)}×`;
};
const perSecond = (count: number, seconds: number): number => (seconds > 0 ? count / seconds : Number.NaN);
const rate = (value: number): string => (Number.isNaN(value) ? '—' : `${Math.round(value)}/s`);
const verdict = (met: boolean): string => (met ? 'met' : 'MISSED');
const counts = (record: Readonly<Record<string, number>>): string =>
  Object.entries(record)
    .map(([key, n]) => `${key} ×${n}`)
    .join(', ');

const cpuShare = (load: LoadFigures): number => load.relayCpuSeconds / load.wallSeconds;
const confirmedShare = (load: LoadFigures): number => load.window.confirmed / Math.max(1, load.window.offered);
const isSaturated = (load: LoadFigures): boolean => cpuShare(load) >= SATURATED_CPU_SHARE || confirmedShare(load) < SATURATED_CPU_SHARE;

const row = (cells: readonly string[], widths: readonly number[]): string =>
  cells
    .map((cell, i) => cell.padEnd(widths[i] ?? 0))
    .join('  ')
    .trimEnd();

const runRow = (relay: string, name: string, run: CrisisRun): string[] => {
  const load = run.load;
  return [
    relay,
    name,
    formatSummary(run.latency),
    `${run.lost}/${run.samples.length + run.lost}`,
    fmt(run.driverLagP99Ms),
    load ? rate(perSecond(load.window.offered, load.window.sendSeconds)) : '—',
    load ? rate(perSecond(load.window.confirmed, load.window.sendSeconds)) : '—',
    load ? `${load.relayCpuSeconds.toFixed(2)} s / ${load.wallSeconds.toFixed(2)} s (${Math.round(cpuShare(load) * 100)} %)` : '—',
    load ? `${Math.round(load.rssStartMb)} → ${Math.round(load.rssEndMb)} MiB (peak ${Math.round(load.peakRssMb)})` : '—',
  ];
};

/** The crisis-under-load section of `npm run bench`: a table, the targets with verdicts, and ratios. */
export const formatCrisisReport = (params: CrisisParams, keel: CrisisResult, reference: CrisisResult): string[] => {
  const lines: string[] = [];
  const perDevice = params.loadRate / params.loadDevices;
  const kp = keel.loaded.load?.prepared;
  const rp = reference.loaded.load?.prepared;
  lines.push(
    `load: ${params.loadDevices} bulk devices × ${fmt(perDevice)} updates/s = ${params.loadRate} updates/s offered open-loop for ${params.loadSeconds} s ` +
      `from a worker thread, Yjs updates of ~${Math.round(kp?.meanUpdateBytes ?? params.updateBytes)} B, sent every ${params.tickMs} ms per device`,
    `  keel: each device its own basic-tier user, one check-in document (lane 4), ${kp?.updatesPerDevice ?? '?'} envelopes per device sealed in advance ` +
      `(${fmt(kp?.prepareSeconds ?? Number.NaN)} s, ~${Math.round(kp?.meanWireBytes ?? 0)} B of JSON each); confirmed = acked after the SQLite commit (synchronous=${params.keelSynchronous})`,
    `  reference: each device its own room, y-protocols update messages (~${Math.round(rp?.meanWireBytes ?? 0)} B); confirmed = applied and echoed back by the relay (in memory, nothing durable)`,
    `measured: one user's devices A → B on a crisis document (keel: safety_plan, lane 10; reference: one room), a write every ${params.intervalMs} ms in the main thread; ` +
      `${params.unloadedSamples} writes unloaded, ${params.loadedSamples} from ${params.warmupMs} ms into the load; a fresh relay process per run, pinned to CPU 0`,
    '',
  );
  const header = ['relay', 'run', 'crisis write → applied on B', 'lost', 'driver lag p99 ms', 'bulk offered', 'bulk confirmed', 'relay CPU (load window)', 'relay RSS start → end'];
  const body = [
    runRow('keel', 'unloaded', keel.unloaded),
    runRow('keel', 'loaded', keel.loaded),
    runRow('reference', 'unloaded', reference.unloaded),
    runRow('reference', 'loaded', reference.loaded),
  ];
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((cells) => cells[i]!.length)));
  lines.push(row(header, widths), ...body.map((cells) => row(cells, widths)), '');

  const kU = keel.unloaded.latency;
  const kL = keel.loaded.latency;
  const rU = reference.unloaded.latency;
  const rL = reference.loaded.latency;
  const keelLost = keel.unloaded.lost + keel.loaded.lost;
  const keelSaturated = keel.loaded.load ? isSaturated(keel.loaded.load) : false;
  lines.push(
    'targets (Keel, crisis lane while the relay is saturated):',
    `  loaded p99 < ${CRISIS_P99_TARGET_MS} ms: ${fmt(kL.p99)} ms → ${verdict(kL.p99 < CRISIS_P99_TARGET_MS && keel.loaded.lost === 0)}`,
    `  loaded p99 ≤ ${CRISIS_LOADED_RATIO_TARGET}× unloaded p99: ${ratio(kL.p99, kU.p99)} (${fmt(kL.p99)} vs ${fmt(kU.p99)} ms) → ${verdict(kL.p99 <= CRISIS_LOADED_RATIO_TARGET * kU.p99 && keel.loaded.lost === 0)}`,
    `  floor, crisis SLA p99 < ${CRISIS_SLA_MS} ms: loaded ${fmt(kL.p99)} ms → ${verdict(kL.p99 < CRISIS_SLA_MS && keel.loaded.lost === 0)}`,
    `  no crisis update lost (applied within ${params.settleMs / 1000} s): ${keelLost} lost → ${verdict(keelLost === 0)}`,
    `  relay saturated during the load (else the figures above prove nothing): ${keelSaturated ? 'yes' : 'NO — raise KEEL_BENCH_LOAD_RATE'}`,
    'ratios:',
    `  loaded / unloaded p99: keel ${ratio(kL.p99, kU.p99)}, reference ${ratio(rL.p99, rU.p99)}`,
    `  keel / reference p50: unloaded ${ratio(kU.p50, rU.p50)}, loaded ${ratio(kL.p50, rL.p50)}`,
    `  keel / reference p99: unloaded ${ratio(kU.p99, rU.p99)}, loaded ${ratio(kL.p99, rL.p99)}`,
  );
  const idle = [keel, reference].filter((r) => r.loaded.load && !isSaturated(r.loaded.load)).map((r) => r.relay);
  if (idle.length) {
    lines.push(`  NOT like for like: ${idle.join(' and ')} not saturated by this load, so its loaded figures are not a saturation figure; raise KEEL_BENCH_LOAD_RATE`);
  }
  lines.push('saturation (load window):');
  for (const result of [keel, reference]) {
    const load = result.loaded.load;
    if (!load) continue;
    const { window, end } = load;
    const what = result.relay === 'keel' ? 'committed+acked' : 'applied+echoed';
    lines.push(
      `  ${result.relay}: offered ${window.offered} in ${window.sendSeconds.toFixed(2)} s (${rate(perSecond(window.offered, window.sendSeconds))}), ` +
        `${what} ${window.confirmed} (${rate(perSecond(window.confirmed, window.sendSeconds))}, ${Math.round(confirmedShare(load) * 100)} % of offered), ` +
        `relay CPU ${Math.round(cpuShare(load) * 100)} % of its core, ${fmt((load.relayCpuSeconds * 1000) / Math.max(1, window.confirmed))} ms CPU per confirmed update → ` +
        `${isSaturated(load) ? 'saturated' : 'NOT saturated'}`,
      `    by ${end.elapsedSeconds.toFixed(1)} s: ${end.confirmed} of ${end.offered} confirmed; driver's unsent socket bytes peaked at ${(window.maxBufferedBytes / 1024 / 1024).toFixed(1)} MiB` +
        (Object.keys(end.refusals).length ? `; refusals: ${counts(end.refusals)}` : '') +
        (Object.keys(end.closes).length ? `; sockets closed by the relay: ${counts(end.closes)}` : ''),
    );
  }
  lines.push(`slowest loaded crisis writes (ms into the series → latency; the series starts ${params.warmupMs} ms into the load, which ends at ${params.loadSeconds * 1000 - params.warmupMs} ms):`);
  for (const result of [keel, reference]) {
    const slowest = [...result.loaded.samples].sort((a, b) => b.latencyMs - a.latencyMs).slice(0, SLOWEST_SHOWN);
    lines.push(`  ${result.relay}: ${slowest.map((s) => `${s.atMs} → ${fmt(s.latencyMs)}`).join(', ') || '—'}`);
  }
  const notes: string[] = [];
  for (const result of [keel, reference]) {
    for (const [name, run] of [['unloaded', result.unloaded], ['loaded', result.loaded]] as const) {
      if (run.deviceErrors.length) notes.push(`  ${result.relay} ${name}: crisis devices reported ${run.deviceErrors.join(', ')}`);
      for (const entry of run.relayLog.slice(0, 5)) notes.push(`  ${result.relay} ${name} relay log: ${entry}`);
      if (run.shutdown.killed) notes.push(`  ${result.relay} ${name}: relay did not exit within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM; killed (SIGKILL)`);
    }
  }
  lines.push('relay warnings, errors, shutdown and device errors:', ...(notes.length ? notes : ['  none']));
  return lines;
};
