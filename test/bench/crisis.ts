import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { createIdentity, linkNewDevice } from '@keel/client';
import { WebSocket } from 'ws';
import { WebsocketProvider } from 'y-websocket';
import * as Y from 'yjs';
import * as z from 'zod';
import { connectDevice, waitFor } from '../support/devices.js';
import { removeRelayDir, startRelayProcess } from '../support/relay-process.js';
import { processCpuSeconds } from './cpu.js';
import { type LoadGenerator, type LoadKind, type LoadPrepared, type LoadStats, startLoadGenerator } from './load.js';
import { processMemory } from './memory.js';
import { startReferenceRelay } from './reference-relay.js';
import { type LatencySummary, summarize } from '../support/stats.js';

/**
 * Crisis under load: one user's safety-plan write on device A → applied on device B, measured
 * in the main thread while a worker saturates the relay with lower-tier updates. Run against
 * Keel's relay and the reference Yjs relay (`@y/websocket-server`) with the same parameters.
 */

/** Core the relay under test is pinned to; scripts/run.mjs pins the driver to the other. */
const RELAY_CPU = 0;
/** Writes made and thrown away before each measured series (connection and JIT warm-up). */
const WARMUP_WRITES = 5;
/** Bounds on the crisis pair's setup and teardown: a hang there is a finding, not a stuck bench. */
const PAIR_CONNECT_TIMEOUT_MS = 20_000;
const PAIR_CLOSE_TIMEOUT_MS = 10_000;

/** KEEL_BENCH_VERBOSE=1: progress on stderr (stdout keeps only the figures). */
const progress = (message: string): void => {
  if (process.env.KEEL_BENCH_VERBOSE === '1') process.stderr.write(`[crisis ${new Date().toISOString().slice(11, 23)}] ${message}\n`);
};

const within = async <T>(promise: Promise<T>, ms: number, what: string): Promise<T> => {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
};

const setting = (min: number, max: number, fallback: number, integer = true) =>
  (integer ? z.coerce.number().int() : z.coerce.number()).min(min).max(max).default(fallback);

/** Every parameter of the scenario, from the environment variable named here (else the default). */
const CrisisEnvSchema = z.object({
  /**
   * Bulk devices (each its own basic-tier user for Keel, its own document for the reference).
   * 160 keeps each Keel user at 250 updates/s × 516 B ≈ 129 kB/s, under basic's 200 KiB/s, so
   * the relay does the full work for every update instead of cheaply deferring it.
   */
  KEEL_BENCH_LOAD_DEVICES: setting(1, 2_000, 160),
  /**
   * Bulk updates per second over all devices, above both relays' capacity on one core: Keel's
   * relay commits ~4–5k/s; the reference applies and echoes ~30k/s (it kept up with 32k/s at
   * 85 % CPU here, so 12k/s would leave it idle half the time).
   */
  KEEL_BENCH_LOAD_RATE: setting(1, 200_000, 40_000),
  /** Length of the load window; the loaded series fills it after the warm-up. */
  KEEL_BENCH_LOAD_SECONDS: setting(1, 60, 6.5, false),
  /** Load before the first measured crisis write, so queues have formed. */
  KEEL_BENCH_LOAD_WARMUP_MS: setting(0, 10_000, 500),
  /** Size of each bulk Yjs update (before sealing). */
  KEEL_BENCH_UPDATE_BYTES: setting(64, 65_536, 500),
  /** Each bulk device sends what is due every this many ms. */
  KEEL_BENCH_LOAD_TICK_MS: setting(1, 1_000, 10),
  /** Crisis writes: one every this many ms. */
  KEEL_BENCH_CRISIS_INTERVAL_MS: setting(10, 1_000, 100),
  KEEL_BENCH_UNLOADED_SAMPLES: setting(10, 2_000, 80),
  /** How long after its last write a series waits for late crisis updates before counting them lost. */
  KEEL_BENCH_SETTLE_SECONDS: setting(1, 120, 20, false),
  /** Keel relay's SQLite `synchronous` (FULL: an ack means fsynced, as shipped). */
  KEEL_BENCH_KEEL_SYNCHRONOUS: z.enum(['FULL', 'NORMAL']).default('FULL'),
});

export interface CrisisParams {
  readonly loadDevices: number;
  readonly loadRate: number;
  readonly loadSeconds: number;
  readonly warmupMs: number;
  readonly updateBytes: number;
  readonly tickMs: number;
  readonly intervalMs: number;
  readonly unloadedSamples: number;
  /** Crisis writes during the load: as many as fit between the warm-up and the window's end. */
  readonly loadedSamples: number;
  readonly settleMs: number;
  readonly keelSynchronous: 'FULL' | 'NORMAL';
}

export const crisisParamsFromEnv = (env: NodeJS.ProcessEnv = process.env): CrisisParams => {
  const parsed = CrisisEnvSchema.safeParse(env);
  if (!parsed.success) {
    throw new Error(`bad benchmark setting: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  const e = parsed.data;
  const loadedSamples = Math.floor((e.KEEL_BENCH_LOAD_SECONDS * 1000 - e.KEEL_BENCH_LOAD_WARMUP_MS) / e.KEEL_BENCH_CRISIS_INTERVAL_MS);
  if (loadedSamples < 1) throw new Error('bad benchmark setting: the load window leaves no time for a crisis write after the warm-up');
  return {
    loadDevices: e.KEEL_BENCH_LOAD_DEVICES,
    loadRate: e.KEEL_BENCH_LOAD_RATE,
    loadSeconds: e.KEEL_BENCH_LOAD_SECONDS,
    warmupMs: e.KEEL_BENCH_LOAD_WARMUP_MS,
    updateBytes: e.KEEL_BENCH_UPDATE_BYTES,
    tickMs: e.KEEL_BENCH_LOAD_TICK_MS,
    intervalMs: e.KEEL_BENCH_CRISIS_INTERVAL_MS,
    unloadedSamples: e.KEEL_BENCH_UNLOADED_SAMPLES,
    loadedSamples,
    settleMs: e.KEEL_BENCH_SETTLE_SECONDS * 1000,
    keelSynchronous: e.KEEL_BENCH_KEEL_SYNCHRONOUS,
  };
};

// ── the measured path: devices A and B of one user ─────────────────────────────────────────

interface CrisisPair {
  /** Device A sets `m[key] = performance.now()` in the crisis document. */
  write(key: string): void;
  /** Write → applied on device B, ms, by key. */
  readonly applied: ReadonlyMap<string, number>;
  /** Errors the devices reported (Keel clients); the reference has none to report. */
  errors(): readonly string[];
  close(): Promise<void>;
}

const observePair = (docA: Y.Doc, docB: Y.Doc, errors: () => readonly string[], close: () => Promise<void>): CrisisPair => {
  const applied = new Map<string, number>();
  const mapB = docB.getMap<number>('m');
  mapB.observe((event) => {
    const now = performance.now();
    for (const key of event.keysChanged) if (!applied.has(key)) applied.set(key, now - mapB.get(key)!);
  });
  const mapA = docA.getMap<number>('m');
  return { write: (key) => mapA.set(key, performance.now()), applied, errors, close };
};

/** Two KeelClients of one user (B linked by A) on a safety plan: crisis class, lane 10. */
const connectKeelPair = async (url: string): Promise<CrisisPair> => {
  const identity = await createIdentity();
  const a = await connectDevice(url, identity);
  const b = await connectDevice(url, await linkNewDevice(identity));
  const spec = { class: 'safety_plan', name: 'bench' } as const;
  const [docA, docB] = [await a.client.open(spec), await b.client.open(spec)];
  await Promise.all([a.client.whenSynced(), b.client.whenSynced()]);
  return observePair(
    docA,
    docB,
    () => [...a.errors, ...b.errors].map((e) => e.code),
    async () => {
      await a.client.close();
      await b.client.close();
    },
  );
};

/** Two y-websocket providers on one room, as two browser tabs of one user would be. */
const connectReferencePair = async (url: string): Promise<CrisisPair> => {
  const [docA, docB] = [new Y.Doc(), new Y.Doc()];
  // y-websocket types its polyfill as the browser WebSocket; `ws` implements what it uses.
  // disableBc: Node's global BroadcastChannel would otherwise sync A and B without the server.
  const options = { WebSocketPolyfill: WebSocket as unknown as typeof globalThis.WebSocket, disableBc: true };
  const providers = [new WebsocketProvider(url, 'crisis', docA, options), new WebsocketProvider(url, 'crisis', docB, options)];
  const close = async () => {
    for (const provider of providers) provider.destroy();
    docA.destroy();
    docB.destroy();
  };
  try {
    await waitFor(() => providers.every((p) => p.synced), 10_000, 'y-websocket providers to sync');
  } catch (error) {
    await close();
    throw error;
  }
  return observePair(docA, docB, () => [], close);
};

/** One crisis write: when it was made (ms from the series' start) and how long until B applied it. */
export interface Sample {
  readonly atMs: number;
  readonly latencyMs: number;
}

interface Series {
  readonly samples: Sample[];
  readonly lost: number;
}

/** `count` crisis writes every `intervalMs` (on a fixed schedule), then waits up to `settleMs` for stragglers. */
const sampleLatencies = async (pair: CrisisPair, prefix: string, count: number, intervalMs: number, settleMs: number): Promise<Series> => {
  const keys: string[] = [];
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const key = `${prefix}${i}`;
    keys.push(key);
    pair.write(key);
    await sleep(Math.max(0, t0 + (i + 1) * intervalMs - performance.now()));
  }
  const deadline = Date.now() + settleMs;
  while (keys.some((k) => !pair.applied.has(k)) && Date.now() < deadline) await sleep(5);
  const samples = keys.flatMap((k, i) => {
    const latencyMs = pair.applied.get(k);
    return latencyMs === undefined ? [] : [{ atMs: i * intervalMs, latencyMs }];
  });
  return { samples, lost: count - samples.length };
};

// ── relays ──────────────────────────────────────────────────────────────────────────────────

interface RelayHandle {
  readonly url: string;
  readonly pid: number;
  /** Warnings and errors the relay printed, counted by kind. */
  logSummary(): readonly string[];
  /** SIGTERM, bounded: a relay that has not exited after `STOP_TIMEOUT_MS` is killed. */
  stop(): Promise<Shutdown>;
}

export interface Shutdown {
  readonly seconds: number;
  /** It did not exit within `STOP_TIMEOUT_MS` of SIGTERM and was killed. */
  readonly killed: boolean;
}

/** A relay exits well within this after SIGTERM; past it, the bench kills it and says so. */
export const STOP_TIMEOUT_MS = 5_000;

const stopBounded = async (stop: () => Promise<void>, kill: () => Promise<void>): Promise<Shutdown> => {
  const t0 = performance.now();
  const stopped = await Promise.race([stop().then(() => true), sleep(STOP_TIMEOUT_MS).then(() => false)]);
  if (!stopped) await kill();
  return { seconds: (performance.now() - t0) / 1000, killed: !stopped };
};

interface CrisisTarget {
  readonly name: string;
  readonly kind: LoadKind;
  start(params: CrisisParams): Promise<RelayHandle>;
  connectPair(url: string): Promise<CrisisPair>;
}

const countLines = (lines: readonly string[]): string[] => {
  const counts = new Map<string, number>();
  for (const line of lines) counts.set(line, (counts.get(line) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).map(([line, n]) => `${n}× ${line}`);
};

/** Keel's JSON log: warnings, errors and deferrals (quota `reject`s are logged at info). */
const summarizeKeelLog = (output: string): string[] =>
  countLines(
    output.split('\n').flatMap((line) => {
      if (!line.startsWith('{')) return line.trim() ? [line.slice(0, 160)] : [];
      try {
        const entry = JSON.parse(line) as { level?: string; msg?: string; code?: string; error?: string };
        if (entry.level !== 'warn' && entry.level !== 'error' && entry.msg !== 'envelope deferred') return [];
        return [[entry.level, entry.msg, entry.code, entry.error].filter(Boolean).join(' ')];
      } catch {
        return [line.slice(0, 160)];
      }
    }),
  );

const keelTarget: CrisisTarget = {
  name: 'keel',
  kind: 'keel',
  async start(params) {
    // Every user nobody has set is on basic: the bulk users' tier; crisis lanes bypass its limits.
    const relay = await startRelayProcess({ cpu: RELAY_CPU, defaultTier: 'basic', args: ['--synchronous', params.keelSynchronous] });
    return {
      url: relay.url,
      pid: relay.pid,
      logSummary: () => summarizeKeelLog(relay.output()),
      async stop() {
        try {
          return await stopBounded(relay.stop, relay.kill9);
        } finally {
          removeRelayDir(relay.dir);
        }
      },
    };
  },
  connectPair: connectKeelPair,
};

const referenceTarget: CrisisTarget = {
  name: 'reference',
  kind: 'reference',
  async start() {
    const relay = await startReferenceRelay({ cpu: RELAY_CPU });
    return {
      url: relay.url,
      pid: relay.pid,
      logSummary: () => countLines(relay.output().split('\n').filter((l) => l.trim() && !l.startsWith('running at')).map((l) => l.slice(0, 160))),
      stop: () => stopBounded(relay.stop, relay.kill),
    };
  },
  connectPair: connectReferencePair,
};

// ── runs ────────────────────────────────────────────────────────────────────────────────────

export interface LoadFigures {
  readonly prepared: LoadPrepared;
  /** Seconds the worker took to open and authenticate every bulk device. */
  readonly connectSeconds: number;
  /** Worker's figures when the load window closed. */
  readonly window: LoadStats;
  /** Worker's figures after the crisis series settled (confirmations keep coming while the relay drains). */
  readonly end: LoadStats;
  /** Wall seconds over which the relay's CPU was measured: start of the load to the end of its window. */
  readonly wallSeconds: number;
  readonly relayCpuSeconds: number;
  readonly rssStartMb: number;
  readonly rssEndMb: number;
  readonly peakRssMb: number;
}

export interface CrisisRun {
  readonly latency: LatencySummary;
  readonly samples: readonly Sample[];
  readonly lost: number;
  /** p99 event-loop delay of the driver's main thread during the series, ms: what the driver itself added. */
  readonly driverLagP99Ms: number;
  readonly deviceErrors: readonly string[];
  readonly relayLog: readonly string[];
  readonly shutdown: Shutdown;
  readonly load?: LoadFigures;
}

export interface CrisisResult {
  readonly relay: string;
  readonly unloaded: CrisisRun;
  readonly loaded: CrisisRun;
}

type Measured = Omit<CrisisRun, 'shutdown'>;

/** The series on a running relay: warm-up, then the crisis writes, with the load around them if given. */
const measureOn = async (target: CrisisTarget, relay: RelayHandle, params: CrisisParams, load: LoadGenerator | undefined): Promise<Measured> => {
  progress(`${target.name}: connecting the crisis pair`);
  const pair = await within(target.connectPair(relay.url), PAIR_CONNECT_TIMEOUT_MS, `${target.name}: connecting the crisis pair`);
  try {
    await sampleLatencies(pair, 'warm', WARMUP_WRITES, params.intervalMs, 5_000);
    const lag = monitorEventLoopDelay({ resolution: 5 });
    const result = (series: Series, figures?: LoadFigures): Measured => ({
      latency: summarize(series.samples.map((s) => s.latencyMs)),
      samples: series.samples,
      lost: series.lost,
      driverLagP99Ms: lag.percentile(99) / 1e6,
      deviceErrors: pair.errors(),
      relayLog: relay.logSummary(),
      ...(figures ? { load: figures } : {}),
    });
    if (!load) {
      progress(`${target.name}: unloaded series`);
      lag.enable();
      const series = await sampleLatencies(pair, 't', params.unloadedSamples, params.intervalMs, params.settleMs);
      lag.disable();
      return result(series);
    }
    progress(`${target.name}: connecting ${params.loadDevices} bulk devices`);
    const c0 = performance.now();
    await load.connect(relay.url);
    progress(`${target.name}: load running`);
    const connectSeconds = (performance.now() - c0) / 1000;
    const cpuBefore = processCpuSeconds(relay.pid);
    const memBefore = processMemory(relay.pid);
    const t0 = performance.now();
    lag.enable();
    const windowDone = load.start();
    windowDone.catch(() => {}); // awaited below; a failure must not surface as unhandled meanwhile
    await sleep(params.warmupMs);
    const seriesDone = sampleLatencies(pair, 't', params.loadedSamples, params.intervalMs, params.settleMs);
    seriesDone.catch(() => {});
    const window = await windowDone;
    const wallSeconds = (performance.now() - t0) / 1000;
    const relayCpuSeconds = processCpuSeconds(relay.pid) - cpuBefore;
    const memAfter = processMemory(relay.pid);
    progress(`${target.name}: load window over; waiting for the last crisis writes`);
    const series = await seriesDone;
    lag.disable();
    return result(series, {
      prepared: load.prepared,
      connectSeconds,
      window,
      end: await load.report(),
      wallSeconds,
      relayCpuSeconds,
      rssStartMb: memBefore.rssMb,
      rssEndMb: memAfter.rssMb,
      peakRssMb: processMemory(relay.pid).peakRssMb,
    });
  } finally {
    progress(`${target.name}: closing the crisis pair`);
    await within(pair.close(), PAIR_CLOSE_TIMEOUT_MS, `${target.name}: closing the crisis pair`);
  }
};

/** One series against a fresh relay process, with or without the bulk load. */
const measure = async (target: CrisisTarget, params: CrisisParams, loaded: boolean): Promise<CrisisRun> => {
  progress(`${target.name} ${loaded ? 'loaded' : 'unloaded'}: ${loaded ? 'preparing the load' : 'starting'}`);
  // Sealing and encoding happen before the relay starts, so they cost it nothing.
  const load = loaded
    ? await startLoadGenerator({
        kind: target.kind,
        devices: params.loadDevices,
        rate: params.loadRate,
        seconds: params.loadSeconds,
        updateBytes: params.updateBytes,
        tickMs: params.tickMs,
      })
    : undefined;
  try {
    const relay = await target.start(params);
    let measured: Measured | undefined;
    let shutdown: Shutdown;
    try {
      measured = await measureOn(target, relay, params, load);
    } finally {
      await load?.close();
      progress(`${target.name}: stopping the relay`);
      shutdown = await relay.stop();
    }
    return { ...measured, shutdown };
  } finally {
    await load?.close();
  }
};

const runTarget = async (target: CrisisTarget, params: CrisisParams): Promise<CrisisResult> => ({
  relay: target.name,
  unloaded: await measure(target, params, false),
  loaded: await measure(target, params, true),
});

/** Keel's relay: bulk users on basic, the crisis pair's safety plan on lane 10. */
export const runKeelCrisis = (params: CrisisParams): Promise<CrisisResult> => runTarget(keelTarget, params);

/** `@y/websocket-server` 0.1.1 under the same load and the same crisis writes. */
export const runReferenceCrisis = (params: CrisisParams): Promise<CrisisResult> => runTarget(referenceTarget, params);
