import { Worker } from 'node:worker_threads';

/**
 * Open-loop bulk load in a worker thread, so the main thread stays free for the devices whose
 * latency a benchmark measures. The worker prepares everything costly (identities, Yjs updates,
 * sealing) before it connects, then sends at a fixed rate whatever the relay does.
 */

export type LoadKind = 'keel' | 'reference';

export interface LoadOptions {
  /** `keel`: basic-tier users pushing sealed envelopes; `reference`: y-protocols update messages. */
  readonly kind: LoadKind;
  /** Bulk devices, each its own user (Keel) or its own document (reference). */
  readonly devices: number;
  /** Updates per second over all devices. */
  readonly rate: number;
  readonly seconds: number;
  /** Size of each Yjs update before sealing. */
  readonly updateBytes: number;
  /** Each device sends what is due every `tickMs` (devices staggered across the tick). */
  readonly tickMs: number;
}

export interface LoadPrepared {
  readonly prepareSeconds: number;
  readonly updatesPerDevice: number;
  readonly meanUpdateBytes: number;
  /** Bytes on the wire per update: the envelope's JSON (Keel), the sync message (reference). */
  readonly meanWireBytes: number;
}

export interface LoadStats {
  /** Updates handed to the sockets since the start. */
  readonly offered: number;
  /** Seconds from the start to the last send. */
  readonly sendSeconds: number;
  /** Keel: updates acknowledged (committed) by the relay; reference: updates the relay applied and echoed back. */
  readonly confirmed: number;
  /** Keel `reject` frames (deferrals and refusals) and `error` frames, by code. */
  readonly refusals: Readonly<Record<string, number>>;
  /** Sockets the relay closed while the load ran, by close code. */
  readonly closes: Readonly<Record<string, number>>;
  /** Largest sum of bytes queued in the driver's sockets, not yet taken by the kernel. */
  readonly maxBufferedBytes: number;
  /** Seconds from the start to this report. */
  readonly elapsedSeconds: number;
}

export type ToWorker = { readonly type: 'connect'; readonly url: string } | { readonly type: 'start' } | { readonly type: 'report' } | { readonly type: 'close' };

export type FromWorker =
  | ({ readonly type: 'prepared' } & LoadPrepared)
  | { readonly type: 'connected'; readonly seconds: number }
  | { readonly type: 'sent'; readonly stats: LoadStats }
  | { readonly type: 'report'; readonly stats: LoadStats }
  | { readonly type: 'closed' }
  | { readonly type: 'failed'; readonly message: string };

export interface LoadGenerator {
  readonly prepared: LoadPrepared;
  /** Opens and authenticates every bulk device's socket. */
  connect(url: string): Promise<void>;
  /** Starts sending; resolves once the load window is over, with the figures at that moment. */
  start(): Promise<LoadStats>;
  /** Figures now (confirmations keep arriving after the window while the relay drains). */
  report(): Promise<LoadStats>;
  /** Closes the worker's sockets and terminates it; safe to call more than once. */
  close(): Promise<void>;
}

/**
 * Runs a TypeScript module in a worker thread: tsx's loader is registered inside the worker
 * first (a worker does not inherit the parent's loader, and `--import tsx` in `execArgv` does
 * not reach worker threads on Node 20).
 */
const startTsWorker = (url: URL, workerData: unknown): Worker => {
  const tsx = import.meta.resolve('tsx/esm/api');
  const source = `import(${JSON.stringify(tsx)}).then((api) => { api.register(); return import(${JSON.stringify(url.href)}); });`;
  return new Worker(source, { eval: true, workerData });
};

/** Starts the worker and waits until it has prepared the whole load (bounded: 3 minutes). */
export const startLoadGenerator = async (options: LoadOptions): Promise<LoadGenerator> => {
  const worker = startTsWorker(new URL('./load-worker.ts', import.meta.url), options);
  let failure: Error | undefined;
  const waiters = new Set<{ type: FromWorker['type']; resolve: (m: FromWorker) => void; reject: (e: Error) => void }>();
  const fail = (error: Error) => {
    failure ??= error;
    for (const w of waiters) w.reject(error);
    waiters.clear();
  };
  worker.on('message', (message: FromWorker) => {
    if (message.type === 'failed') return fail(new Error(`load worker: ${message.message}`));
    for (const w of waiters) {
      if (w.type === message.type) {
        waiters.delete(w);
        w.resolve(message);
        return;
      }
    }
  });
  worker.on('error', (error) => fail(error));
  worker.on('exit', (code) => fail(new Error(`load worker exited (${code})`)));

  const expect = <K extends FromWorker['type']>(type: K, timeoutMs: number): Promise<Extract<FromWorker, { type: K }>> => {
    if (failure) return Promise.reject(failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(entry);
        reject(new Error(`load worker: no "${type}" within ${timeoutMs} ms`));
      }, timeoutMs);
      const entry = {
        type,
        resolve: (m: FromWorker) => {
          clearTimeout(timer);
          resolve(m as Extract<FromWorker, { type: K }>);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      waiters.add(entry);
    });
  };
  const post = (message: ToWorker) => worker.postMessage(message);

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      if (!failure) {
        const closed = expect('closed', 5_000).catch(() => undefined);
        post({ type: 'close' });
        await closed;
      }
      await worker.terminate();
    })());

  try {
    const prepared = await expect('prepared', 180_000);
    return {
      prepared,
      async connect(url) {
        const done = expect('connected', 60_000);
        post({ type: 'connect', url });
        await done;
      },
      async start() {
        const sent = expect('sent', options.seconds * 1000 + 30_000);
        post({ type: 'start' });
        return (await sent).stats;
      },
      async report() {
        const answer = expect('report', 10_000);
        post({ type: 'report' });
        return (await answer).stats;
      },
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
};
