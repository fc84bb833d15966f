import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const RELAY_CLI = fileURLToPath(new URL('../../packages/relay/dist/cli.js', import.meta.url));

export interface RelayProcess {
  readonly url: string;
  /** HTTP base URL: health, admin, webhooks. */
  readonly httpUrl: string;
  /** Bearer token of the relay's operator commands. */
  readonly adminToken: string;
  readonly pid: number;
  readonly port: number;
  readonly dbPath: string;
  readonly dir: string;
  /** Everything the relay printed so far (its JSON log). */
  output(): string;
  /** Resolves with the exit status (null when killed by a signal) once the process has exited. */
  readonly exited: Promise<number | null>;
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
  /** Flags for node itself, before the script (e.g. `--cpu-prof` to profile a run). */
  readonly nodeArgs?: readonly string[];
  /** Pin the relay to this CPU core (taskset), for benchmarks. */
  readonly cpu?: number;
  /**
   * Tier of users nothing has set. Most tests are about sync, not payment, so they run on
   * premium; tier tests pass the tier they are about.
   */
  readonly defaultTier?: 'trial' | 'basic' | 'grace_period' | 'premium';
}

/** Starts the built `keel-relay` CLI on 127.0.0.1 and waits for its "listening" line. */
export const startRelayProcess = async (options: RelayProcessOptions = {}): Promise<RelayProcess> => {
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'keel-relay-'));
  const dbPath = join(dir, 'relay.db');
  const adminToken = options.env?.KEEL_RELAY_ADMIN_TOKEN ?? randomBytes(24).toString('base64url');
  const relayArgs = [
    ...(options.nodeArgs ?? []),
    RELAY_CLI,
    '--host',
    '127.0.0.1',
    '--port',
    String(options.port ?? 0),
    '--db',
    dbPath,
    '--default-tier',
    options.defaultTier ?? 'premium',
    ...(options.args ?? []),
  ];
  // taskset execs node in place, so the child's pid is the relay's.
  const [command, args] =
    options.cpu === undefined ? [process.execPath, relayArgs] : ['taskset', ['-c', String(options.cpu), process.execPath, ...relayArgs]];
  const child: ChildProcess = spawn(command, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, KEEL_RELAY_ADMIN_TOKEN: adminToken, ...options.env },
  });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ownsDir = options.dir === undefined;
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      // Never leave a half-started relay behind.
      child.kill('SIGKILL');
      reject(new Error(`relay did not start within 10 s:\n${out}`));
    }, 10_000);
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
  }).catch((error: unknown) => {
    if (ownsDir) rmSync(dir, { recursive: true, force: true });
    throw error;
  });
  const signal = async (sig: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    await exited;
  };
  return {
    url: `ws://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    adminToken,
    pid: child.pid!,
    port,
    dbPath,
    dir,
    output: () => out,
    exited,
    stop: () => signal('SIGTERM'),
    kill9: () => signal('SIGKILL'),
  };
};

/** The relay's JSON log lines so far, parsed. */
export const logLines = (relay: RelayProcess) =>
  relay
    .output()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);

/** Removes a relay's temp dir (database, WAL and shared-memory files). */
export const removeRelayDir = (dir: string): void => rmSync(dir, { recursive: true, force: true });

/** Runs a `keel-relay` CLI command (e.g. `tier set …`) to completion; never throws on exit status. */
export const runRelayCli = (args: readonly string[], env: Readonly<Record<string, string>> = {}) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [RELAY_CLI, ...args], { env: { ...process.env, ...env }, timeout: 10_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });

/**
 * The relay's error-level log lines, but for the crisis SLA's own alerts (`alert: crisis_…`): an
 * attack test bounds the honest crisis p99, so its slowest edits may be late enough to alert, and
 * that alert is the relay doing its job. Any other error line is a failure.
 */
export const errorLinesBesidesCrisisAlerts = (output: string): string[] =>
  output.split('\n').filter((line) => line.includes('"level":"error"') && !/"msg":"alert: crisis_(sla_breach|receipt_missing)"/.test(line));
