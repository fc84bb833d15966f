import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const RELAY_CLI = fileURLToPath(new URL('../../packages/relay/dist/cli.js', import.meta.url));

export interface RelayProcess {
  readonly url: string;
  readonly pid: number;
  readonly port: number;
  readonly dbPath: string;
  readonly dir: string;
  /** Everything the relay printed so far (its JSON log). */
  output(): string;
  /** SIGTERM and wait for exit. */
  stop(): Promise<void>;
  /** SIGKILL: no shutdown hooks, no final flush. */
  kill9(): Promise<void>;
}

export interface RelayProcessOptions {
  /** Reuse a database (restart after a crash); default: a new temp dir. */
  readonly dir?: string;
  readonly port?: number;
  readonly args?: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  /** Pin the relay to this CPU core (taskset), for benchmarks. */
  readonly cpu?: number;
}

/** Starts the built `keel-relay` CLI on 127.0.0.1 and waits for its "listening" line. */
export const startRelayProcess = async (options: RelayProcessOptions = {}): Promise<RelayProcess> => {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'keel-relay-'));
  const dbPath = join(dir, 'relay.db');
  const relayArgs = [RELAY_CLI, '--host', '127.0.0.1', '--port', String(options.port ?? 0), '--db', dbPath, ...(options.args ?? [])];
  // taskset execs node in place, so the child's pid is the relay's.
  const [command, args] =
    options.cpu === undefined ? [process.execPath, relayArgs] : ['taskset', ['-c', String(options.cpu), process.execPath, ...relayArgs]];
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...options.env } });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`relay did not start within 10 s:\n${out}`)), 10_000);
    const check = () => {
      const match = /"msg":"listening"[^\n]*"port":(\d+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        child.stdout!.off('data', check);
        resolve(Number(match[1]));
      }
    };
    child.stdout!.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`relay exited with ${code} before listening:\n${out}`));
    });
  });
  const signal = async (sig: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    await exited;
  };
  return {
    url: `ws://127.0.0.1:${port}`,
    pid: child.pid!,
    port,
    dbPath,
    dir,
    output: () => out,
    stop: () => signal('SIGTERM'),
    kill9: () => signal('SIGKILL'),
  };
};

/** Removes a relay's temp dir (database, WAL and shared-memory files). */
export const removeRelayDir = (dir: string): void => rmSync(dir, { recursive: true, force: true });
