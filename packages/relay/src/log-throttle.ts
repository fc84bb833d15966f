import type { LogFields, LogLevel, Logger } from './log.js';

/** One line per key per 10 s: enough to see an attack start, too few to fill a disk. */
export const DEFAULT_LOG_THROTTLE_INTERVAL_MS = 10_000;

export interface LogThrottleDeps {
  readonly log: Logger;
  readonly now: () => number;
  readonly intervalMs?: number;
  /**
   * Keys remembered at most. Past it the oldest key is forgotten (its pending suppressed line
   * written first), so keys may name a pseudonymous device without memory growing with traffic.
   * Unbounded when absent: keys must then come from a fixed set.
   */
  readonly maxKeys?: number;
}

/**
 * A logger for lines anyone on the network can trigger (refused webhooks, failed admin logins):
 * at most one line per key per interval. Each line stands for itself and `suppressed` more of
 * its key dropped since the previous line, so summing 1 + suppressed counts every event.
 */
export interface LogThrottle {
  /**
   * Logs now, or counts the line as suppressed when `key` logged less than an interval ago.
   * `key` must come from a fixed set (a code, a route label), never from a request: every key
   * holds a little memory until the relay stops.
   */
  log(key: string, level: LogLevel, msg: string, fields?: LogFields): void;
  /** Writes the last suppressed line of every key that has one pending (on shutdown), carrying the rest as `suppressed`. */
  flush(): void;
}

interface KeyState {
  lastAt: number;
  suppressed: number;
  last: { level: LogLevel; msg: string; fields: LogFields | undefined };
}

/** Creates a {@link LogThrottle} on an injected clock. */
export const createLogThrottle = (deps: LogThrottleDeps): LogThrottle => {
  const { log, now } = deps;
  const intervalMs = deps.intervalMs ?? DEFAULT_LOG_THROTTLE_INTERVAL_MS;
  const keys = new Map<string, KeyState>();

  const write = (state: KeyState, suppressed: number) => {
    const { level, msg, fields } = state.last;
    log.log(level, msg, suppressed > 0 ? { ...fields, suppressed } : fields);
    state.suppressed = 0;
  };

  return {
    log(key, level, msg, fields) {
      const at = now();
      const state = keys.get(key);
      if (state && at - state.lastAt < intervalMs) {
        state.suppressed++;
        state.last = { level, msg, fields };
        return;
      }
      const next: KeyState = state ?? { lastAt: at, suppressed: 0, last: { level, msg, fields } };
      next.lastAt = at;
      next.last = { level, msg, fields };
      // Re-inserted, so the map's order is by last line written: the first key is the stalest.
      keys.delete(key);
      keys.set(key, next);
      write(next, next.suppressed);
      if (deps.maxKeys !== undefined && keys.size > deps.maxKeys) {
        const [oldestKey, oldest] = keys.entries().next().value!;
        keys.delete(oldestKey);
        if (oldest.suppressed > 0) write(oldest, oldest.suppressed - 1);
      }
    },
    flush() {
      for (const state of keys.values()) {
        if (state.suppressed === 0) continue;
        state.lastAt = now();
        // The last suppressed line is written after all; the others are its count.
        write(state, state.suppressed - 1);
      }
    },
  };
};
