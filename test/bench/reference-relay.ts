import { type ChildProcess, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';

/** The reference Yjs relay's own server script (`@y/websocket-server`, in-memory documents). */
export const REFERENCE_SERVER = join(dirname(createRequire(import.meta.url).resolve('@y/websocket-server/package.json')), 'src', 'server.js');

export interface ReferenceRelay {
  /** Base URL; a room is `${url}/${room}`, as y-websocket builds it. */
  readonly url: string;
  readonly pid: number;
  readonly port: number;
  /** Everything the server printed so far. */
  output(): string;
  /** SIGTERM and wait for exit. */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
}

/** A port that was free a moment ago; the server takes no port 0 (it prints the port it was given). */
const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });

const launch = (port: number, cpu: number | undefined): Promise<ReferenceRelay> => {
  // No YPERSISTENCE / CALLBACK_URL: the stock in-memory server, as its README starts it.
  const { YPERSISTENCE: _p, CALLBACK_URL: _c, ...env } = process.env;
  const [command, args] =
    cpu === undefined ? [process.execPath, [REFERENCE_SERVER]] : ['taskset', ['-c', String(cpu), process.execPath, REFERENCE_SERVER]];
  // taskset execs node in place, so the child's pid is the server's.
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, HOST: '127.0.0.1', PORT: String(port) } });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const signal = async (sig: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    await exited;
  };
  return new Promise<ReferenceRelay>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`reference relay did not start within 10 s:\n${out}`));
    }, 10_000);
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`reference relay exited with ${code} before listening:\n${out}`));
    };
    child.once('exit', onExit);
    const check = () => {
      if (!out.includes('running at')) return;
      clearTimeout(timer);
      child.off('exit', onExit);
      child.stdout!.off('data', check);
      resolve({
        url: `ws://127.0.0.1:${port}`,
        pid: child.pid!,
        port,
        output: () => out,
        stop: () => signal('SIGTERM'),
        kill: () => signal('SIGKILL'),
      });
    };
    child.stdout!.on('data', check);
  });
};

/** Starts `@y/websocket-server` on 127.0.0.1 (optionally pinned to a core) and waits until it listens. */
export const startReferenceRelay = async (options: { readonly cpu?: number } = {}): Promise<ReferenceRelay> => {
  let lastError: unknown;
  // Another process may take the port between the probe and the server's listen: retry, bounded.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await launch(await freePort(), options.cpu);
    } catch (error) {
      lastError = error;
    }
  }
  throw lastError;
};
