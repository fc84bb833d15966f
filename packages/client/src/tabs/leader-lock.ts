// Who leads: one lock per app name, held for as long as the leading tab lives.

/** A held lock; `release()` lets the next waiting tab lead. */
export interface HeldLock {
  release(): void;
}

/**
 * The election behind one small interface: browsers use Web Locks (released by the browser when
 * a tab closes or crashes), Node tests an in-process implementation with the same semantics.
 */
export interface LeaderLock {
  /** Resolves once this tab holds `name` (waiting its turn); rejects when `signal` aborts first. */
  acquire(name: string, signal: AbortSignal): Promise<HeldLock>;
}

/** Web Locks (`navigator.locks`): the lock is held until released or until the tab is gone. */
export const createWebLocks = (locks: LockManager): LeaderLock => ({
  acquire: (name, signal) =>
    new Promise<HeldLock>((resolve, reject) => {
      let release = () => {};
      const held = new Promise<void>((done) => (release = done));
      // The callback's promise is the hold: the lock stays ours until it settles.
      locks
        .request(name, { mode: 'exclusive', signal }, () => {
          resolve({ release });
          return held;
        })
        .catch(reject);
    }),
});

/**
 * Locks shared by every caller in this JavaScript realm: what Node tests (many tabs in one
 * process) and runtimes without Web Locks get. FIFO, like Web Locks.
 */
export const createMemoryLocks = (): LeaderLock => {
  const queues = new Map<string, { held: boolean; waiting: (() => void)[] }>();
  const grantNext = (name: string) => {
    const queue = queues.get(name);
    if (!queue) return;
    const next = queue.waiting.shift();
    if (next) next();
    else queues.delete(name);
  };
  return {
    acquire: (name, signal) =>
      new Promise<HeldLock>((resolve, reject) => {
        if (signal.aborted) return reject(signal.reason);
        let queue = queues.get(name);
        if (!queue) queues.set(name, (queue = { held: false, waiting: [] }));
        const grant = () => {
          signal.removeEventListener('abort', onAbort);
          queue.held = true;
          let released = false;
          resolve({
            release: () => {
              if (released) return;
              released = true;
              queue.held = false;
              grantNext(name);
            },
          });
        };
        const onAbort = () => {
          const at = queue.waiting.indexOf(grant);
          if (at >= 0) queue.waiting.splice(at, 1);
          reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        if (queue.held) queue.waiting.push(grant);
        else grant();
      }),
  };
};
