/** A source of work whose reading can be paused (a WebSocket). */
export interface WorkOwner {
  /**
   * Owners of one group share one turn per round: a user's connections are one group, so a
   * user with a hundred sockets gets no more of the relay than a user with one.
   */
  readonly group: unknown;
  pause(): void;
  resume(): void;
}

/** A bounded step of work. 'again' keeps it at the head of its owner's queue for its next turn. */
export type TaskResult = void | 'again';
export type Task = () => TaskResult | Promise<TaskResult>;

/** Urgent work (the crisis lane) always runs before normal work. */
export type WorkClass = 'urgent' | 'normal';

export interface WorkQueueOptions {
  /** Longest stretch of queued work run before yielding to I/O, in ms. */
  readonly sliceMs?: number;
  /** Queued tasks of one owner past which its socket is paused (TCP pushes back on it). */
  readonly pauseAbove?: number;
  /** …and resumed once it has at most this many. */
  readonly resumeAt?: number;
  /**
   * Longest stretch (ms) urgent work keeps normal work waiting: past it, one normal task takes
   * a turn before urgent work goes on.
   */
  readonly urgentStretchMs?: number;
  readonly now?: () => number;
  /** A task threw: a bug, not an expected failure (tasks report those themselves). */
  readonly onError?: (error: unknown) => void;
}

interface OwnerState {
  readonly owner: WorkOwner;
  readonly tasks: Task[];
  /** The first this many tasks run as urgent: every task up to the owner's last urgent one. */
  urgentThrough: number;
  paused: boolean;
  running: boolean;
  forgotten: boolean;
}

/** Groups with queued work, round-robin: a Map keeps insertion order, re-inserting rotates. */
type Ring = Map<unknown, Set<OwnerState>>;

/**
 * The relay's scheduler for everything that costs CPU: handshakes, subscriptions and catch-up,
 * verification and commits of pushes. Work is not done as frames arrive but queued here and run
 * in slices of a few milliseconds that yield to I/O, so nothing one connection sends can hold
 * the event loop for long. Every task is a bounded step (a big job returns 'again' and continues
 * on its next turn).
 *
 * Fairness: groups (users) take turns, one task per turn, and within a group its owners
 * (connections) take turns; an owner's own tasks run in order. Urgent work (the crisis lane)
 * runs before any normal work, with the same turn-taking among urgent groups, so one user's
 * crisis-lane flood delays another user's crisis update by at most one bounded step per round.
 * Urgent work cannot starve normal work either: once it has kept normal work waiting for
 * `urgentStretchMs`, one normal task runs, so a crisis-lane flood (which the relay never drops)
 * slows everyone else's ordinary sync without stopping it, and an honest crisis update waits
 * at most one extra bounded step for it.
 * An owner with a backlog has its socket paused: the backlog stays in its TCP buffers, not in
 * the relay's memory.
 */
export const createWorkQueue = (options: WorkQueueOptions = {}) => {
  const sliceMs = options.sliceMs ?? 2;
  const pauseAbove = options.pauseAbove ?? 4;
  const resumeAt = options.resumeAt ?? 1;
  const urgentStretchMs = options.urgentStretchMs ?? 20;
  const now = options.now ?? (() => performance.now());
  const onError =
    options.onError ??
    ((error: unknown) => {
      queueMicrotask(() => {
        throw error;
      });
    });
  const states = new Map<WorkOwner, OwnerState>();
  const rings: Record<WorkClass, Ring> = { urgent: new Map(), normal: new Map() };
  let queued = 0;
  /** When normal work last had a turn, or last had nothing waiting. */
  let normalTurnAt = now();
  let scheduled = false;
  let draining = false;
  const idleWaiters: (() => void)[] = [];

  const place = (state: OwnerState): void => {
    if (state.running || state.forgotten || state.tasks.length === 0) return;
    const ring = rings[state.urgentThrough > 0 ? 'urgent' : 'normal'];
    let group = ring.get(state.owner.group);
    if (!group) ring.set(state.owner.group, (group = new Set()));
    group.add(state);
  };

  const unplace = (state: OwnerState): void => {
    for (const ring of [rings.urgent, rings.normal]) {
      const group = ring.get(state.owner.group);
      if (!group?.delete(state)) continue;
      if (group.size === 0) ring.delete(state.owner.group);
    }
  };

  /**
   * Takes the next owner in turn, urgent first (unless normal work has waited out the urgent
   * stretch); its group goes to the back of the round.
   */
  const pick = (): OwnerState | undefined => {
    const at = now();
    if (rings.normal.size === 0) normalTurnAt = at;
    const order = at - normalTurnAt >= urgentStretchMs ? [rings.normal, rings.urgent] : [rings.urgent, rings.normal];
    for (const ring of order) {
      const first = ring.entries().next();
      if (first.done) continue;
      if (ring === rings.normal) normalTurnAt = at;
      const [key, group] = first.value;
      ring.delete(key);
      const state = group.values().next().value!;
      group.delete(state);
      if (group.size > 0) ring.set(key, group);
      return state;
    }
    return undefined;
  };

  const settle = (state: OwnerState): void => {
    if (state.paused && state.tasks.length <= resumeAt) {
      state.paused = false;
      state.owner.resume();
    }
    if (state.tasks.length === 0 && !state.running) states.delete(state.owner);
  };

  const finish = (state: OwnerState, result: TaskResult): void => {
    state.running = false;
    if (state.forgotten) return;
    if (result !== 'again') {
      state.tasks.shift();
      queued--;
      if (state.urgentThrough > 0) state.urgentThrough--;
    }
    settle(state);
    place(state);
  };

  const drain = async (): Promise<void> => {
    scheduled = false;
    if (draining) return;
    draining = true;
    try {
      const deadline = now() + sliceMs;
      for (;;) {
        const state = pick();
        if (!state) break;
        state.running = true;
        let result: TaskResult;
        try {
          const outcome = state.tasks[0]!();
          // With the SQLite store every await inside a task settles in microtasks, so the
          // slice's clock counts the whole task and no I/O runs in the middle of it.
          result = outcome instanceof Promise ? await outcome : outcome;
        } catch (error) {
          result = undefined;
          onError(error);
        }
        finish(state, result);
        if (now() >= deadline) break;
      }
    } finally {
      draining = false;
      if (queued > 0) schedule();
      else for (const resolve of idleWaiters.splice(0)) resolve();
    }
  };

  const schedule = (): void => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(() => void drain());
  };

  const stateOf = (owner: WorkOwner): OwnerState => {
    let state = states.get(owner);
    if (!state) {
      state = { owner, tasks: [], urgentThrough: 0, paused: false, running: false, forgotten: false };
      states.set(owner, state);
    }
    return state;
  };

  return {
    /** Tasks waiting or running. */
    get size(): number {
      return queued;
    },
    /** Tasks of one owner waiting or running. */
    pending(owner: WorkOwner): number {
      return states.get(owner)?.tasks.length ?? 0;
    },
    /** Queues a task behind the owner's earlier ones; `urgent` also moves those ahead of normal work. */
    enqueue(owner: WorkOwner, task: Task, cls: WorkClass = 'normal'): void {
      const state = stateOf(owner);
      if (state.forgotten) return;
      unplace(state);
      state.tasks.push(task);
      queued++;
      // An owner's tasks run in order, so urgent work lifts everything queued before it (and
      // nothing queued after it).
      if (cls === 'urgent') state.urgentThrough = state.tasks.length;
      if (state.tasks.length > pauseAbove && !state.paused) {
        state.paused = true;
        owner.pause();
      }
      place(state);
      schedule();
    },
    /** Drops an owner's queued tasks (its socket closed); a paused socket is resumed. */
    forget(owner: WorkOwner): void {
      const state = states.get(owner);
      if (!state) return;
      unplace(state);
      queued -= state.tasks.length;
      state.tasks.length = 0;
      state.forgotten = true;
      states.delete(owner);
      if (state.paused) {
        state.paused = false;
        owner.resume();
      }
      if (queued === 0 && !draining) for (const resolve of idleWaiters.splice(0)) resolve();
    },
    /** Resolves once nothing is queued or running (shutdown). */
    idle(): Promise<void> {
      if (queued === 0 && !draining) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },
  };
};
export type WorkQueue = ReturnType<typeof createWorkQueue>;
