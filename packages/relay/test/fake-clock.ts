import type { TimerDeps } from '../src/entitlements/grace.js';

/** A clock and timer queue that move only when told to. */
export const createFakeClock = (start: number) => {
  let now = start;
  let nextId = 0;
  const due = new Map<number, { at: number; fn: () => void }>();
  const timers: TimerDeps = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = ++nextId;
      due.set(id, { at: now + Math.max(0, ms), fn });
      return id;
    },
    clearTimeout: (handle) => void due.delete(handle as number),
  };
  return {
    timers,
    now: () => now,
    pending: () => due.size,
    /** Moves time forward, firing each timer at its moment, in order; `settle` runs after each. */
    async advance(ms: number, settle: () => Promise<void> = async () => {}) {
      const end = now + ms;
      for (let guard = 0; guard < 10_000; guard++) {
        let next: [number, { at: number; fn: () => void }] | undefined;
        for (const entry of due) if (entry[1].at <= end && (!next || entry[1].at < next[1].at)) next = entry;
        if (!next) break;
        due.delete(next[0]);
        now = next[1].at;
        next[1].fn();
        await settle();
      }
      now = end;
    },
  };
};
