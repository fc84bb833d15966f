import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { AttackPlan, AttackReport } from './attacker-plan.js';
import type { TestScope } from './scope.js';

const SCRIPT = fileURLToPath(new URL('./attacker.ts', import.meta.url));
const TSX = fileURLToPath(new URL('../node_modules/tsx/dist/loader.mjs', import.meta.url));

export interface Attacker {
  readonly pid: number;
  /** Resolves when the plan has run out (or stop() ended it), with what the attacker saw. */
  readonly done: Promise<AttackReport>;
  /** Ends the attack now: every attacking socket is cut. */
  stop(): Promise<AttackReport>;
}

/** Runs `plan` in a separate process; the scope kills it after the test, whatever happens. */
export const startAttacker = async (scope: TestScope, plan: AttackPlan): Promise<Attacker> => {
  const child: ChildProcess = fork(SCRIPT, [], { execArgv: ['--import', TSX], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  scope.defer(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  let resolveDone: (report: AttackReport) => void = () => {};
  const done = new Promise<AttackReport>((resolve) => (resolveDone = resolve));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('attacker did not start within 10 s')), 10_000);
    child.on('message', (message: { type: 'ready' } | { type: 'done'; report: AttackReport }) => {
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
      reject(new Error(`attacker exited (${code}) before it started`));
    });
  });
  child.send({ type: 'start', plan });
  return {
    pid: child.pid!,
    done,
    async stop() {
      if (child.connected) child.send({ type: 'stop' });
      const timeout = new Promise<AttackReport>((_, reject) => setTimeout(() => reject(new Error('attacker did not stop within 10 s')), 10_000));
      return Promise.race([done, timeout]);
    },
  };
};
