/** A source of work whose reading can be paused (a WebSocket). */
export interface WorkOwner {
  pause(): void;
  resume(): void;
}

interface Task {
  readonly owner: WorkOwner;
  readonly run: () => void;
}

export interface WorkQueueOptions {
  /** Longest stretch of queued work run before yielding to I/O, in ms. */
  readonly sliceMs?: number;
  /** Queued tasks of one owner past which its socket is paused (TCP pushes back on it). */
  readonly pauseAbove?: number;
  /** …and resumed once it has at most this many. */
  readonly resumeAt?: number;
  readonly now?: () => number;
}

/**
 * The relay's queue for bulk (non-crisis) work. Bulk frames are not handled as they arrive but
 * queued here and run in slices of a few milliseconds, yielding to I/O between slices, so a
 * crisis frame that arrives while the relay is saturated waits at most one slice. A device
 * that floods the queue has its socket paused: the backlog stays in its TCP buffers, not in the
 * relay's memory or event loop.
 */
export const createWorkQueue = (options: WorkQueueOptions = {}) => {
  const sliceMs = options.sliceMs ?? 2;
  const pauseAbove = options.pauseAbove ?? 4;
  const resumeAt = options.resumeAt ?? 1;
  const now = options.now ?? (() => performance.now());
  let tasks: Task[] = [];
  let head = 0;
  const queued = new Map<WorkOwner, number>();
  const paused = new Set<WorkOwner>();
  let scheduled = false;

  const settleOwner = (owner: WorkOwner, n: number): void => {
    if (n <= 0) queued.delete(owner);
    else queued.set(owner, n);
    if (paused.has(owner) && n <= resumeAt) {
      paused.delete(owner);
      owner.resume();
    }
  };

  const drain = (): void => {
    scheduled = false;
    const deadline = now() + sliceMs;
    while (head < tasks.length) {
      const task = tasks[head]!;
      head++;
      settleOwner(task.owner, (queued.get(task.owner) ?? 1) - 1);
      task.run();
      if (now() >= deadline) break;
    }
    if (head >= tasks.length) {
      tasks = [];
      head = 0;
    } else {
      if (head > 4096) {
        tasks = tasks.slice(head);
        head = 0;
      }
      schedule();
    }
  };

  const schedule = (): void => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(drain);
  };

  return {
    get size(): number {
      return tasks.length - head;
    },
    enqueue(owner: WorkOwner, run: () => void): void {
      tasks.push({ owner, run });
      const n = (queued.get(owner) ?? 0) + 1;
      queued.set(owner, n);
      if (n > pauseAbove && !paused.has(owner)) {
        paused.add(owner);
        owner.pause();
      }
      schedule();
    },
    /** Runs an owner's queued tasks now, in order: urgent work of that owner must not overtake them. */
    runQueuedOf(owner: WorkOwner): void {
      if (!queued.has(owner)) return;
      const mine: Task[] = [];
      const rest: Task[] = [];
      for (let i = head; i < tasks.length; i++) (tasks[i]!.owner === owner ? mine : rest).push(tasks[i]!);
      tasks = rest;
      head = 0;
      settleOwner(owner, 0);
      for (const task of mine) task.run();
    },
    /** Drops an owner's queued tasks (its socket closed). */
    forget(owner: WorkOwner): void {
      if (!queued.has(owner)) return;
      tasks = tasks.slice(head).filter((t) => t.owner !== owner);
      head = 0;
      queued.delete(owner);
      paused.delete(owner);
    },
  };
};
export type WorkQueue = ReturnType<typeof createWorkQueue>;
