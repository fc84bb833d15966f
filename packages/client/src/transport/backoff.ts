export interface BackoffOptions {
  /** First retry ceiling in ms. */
  readonly baseMs?: number;
  /** Largest ceiling in ms. */
  readonly maxMs?: number;
  /** Uniform random in [0, 1). */
  readonly random?: () => number;
}

/**
 * Exponential backoff with full jitter (delay uniform in [0, min(max, base·2ⁿ))): after an
 * outage, reconnecting devices spread out instead of stampeding the relay.
 */
export const createBackoff = (options: BackoffOptions = {}) => {
  const base = options.baseMs ?? 250;
  const max = options.maxMs ?? 15_000;
  const random = options.random ?? Math.random;
  let attempt = 0;
  return {
    next(): number {
      const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
      attempt++;
      return Math.floor(random() * ceiling);
    },
    reset(): void {
      attempt = 0;
    },
    get attempt(): number {
      return attempt;
    },
  };
};
export type Backoff = ReturnType<typeof createBackoff>;
