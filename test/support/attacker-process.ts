import { type ChildProcess, type Serializable, fork } from 'node:child_process';
import { setPriority } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { AttackPlan, AttackReport } from './attacker-plan.js';
import type { HonestPlan, HonestReport } from './honest-plan.js';
import type { TestScope } from './scope.js';

const TSX = fileURLToPath(new URL('../node_modules/tsx/dist/loader.mjs', import.meta.url));

/** A test-support script in its own Node process (TypeScript through tsx), spoken to over IPC. */
interface Worker<R> {
  readonly pid: number;
  /** Resolves with the script's report when it is done. */
  readonly done: Promise<R>;
  send(message: Serializable): void;
  readonly connected: boolean;
}

/** Forks `script` (in test/support), sends it `start`, and kills it after the test whatever happens. */
const forkWorker = async <R>(scope: TestScope, script: string, start: Serializable): Promise<Worker<R>> => {
  const child: ChildProcess = fork(fileURLToPath(new URL(script, import.meta.url)), [], { execArgv: ['--import', TSX], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  // The load these processes make stands for other machines: on this machine's two cores they
  // yield to the relay and to the test's process, which times crisis edits. (Niceness only
  // orders who runs first; they still use every cycle left over.)
  setPriority(child.pid!, 10);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  scope.defer(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  let resolveDone: (report: R) => void = () => {};
  const done = new Promise<R>((resolve) => (resolveDone = resolve));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${script} did not start within 10 s`)), 10_000);
    child.on('message', (message: { type: 'ready' } | { type: 'done'; report: R }) => {
      if (message.type === 'ready') {
        clearTimeout(timer);
        resolve();
      } else {
        resolveDone(message.report);
        child.kill('SIGTERM');
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${script} exited (${code}) before it started`));
    });
  });
  child.send(start);
  return { pid: child.pid!, done, send: (message) => child.send(message), get connected() { return child.connected; } };
};

export interface Attacker {
  readonly pid: number;
  /** Resolves when the plan has run out (or stop() ended it), with what the attacker saw. */
  readonly done: Promise<AttackReport>;
  /** Ends the attack now: every attacking socket is cut. */
  stop(): Promise<AttackReport>;
}

/** Runs `plan` in a separate process; the scope kills it after the test, whatever happens. */
export const startAttacker = async (scope: TestScope, plan: AttackPlan): Promise<Attacker> => {
  const worker = await forkWorker<AttackReport>(scope, './attacker.ts', { type: 'start', plan });
  return {
    pid: worker.pid,
    done: worker.done,
    async stop() {
      if (worker.connected) worker.send({ type: 'stop' });
      const timeout = new Promise<AttackReport>((_, reject) => setTimeout(() => reject(new Error('attacker did not stop within 10 s')), 10_000));
      return Promise.race([worker.done, timeout]);
    },
  };
};

/** Honest users writing documents of every size in a separate process (see honest-worker.ts). */
export const startHonestUsers = async (scope: TestScope, plan: HonestPlan): Promise<{ readonly done: Promise<HonestReport> }> => {
  const worker = await forkWorker<HonestReport>(scope, './honest-worker.ts', { type: 'start', plan });
  return { done: worker.done };
};
