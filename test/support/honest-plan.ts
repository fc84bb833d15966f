export interface HonestPlan {
  readonly url: string;
  /** Users, two devices each. */
  readonly users: number;
  readonly durationMs: number;
  readonly intervalMs: number;
  /** Share of edits that are large (up to 3 MiB). */
  readonly largeShare: number;
  readonly seed: number;
}

export interface HonestReport {
  edits: number;
  bytes: number;
  /** Every document identical on both devices of its user after the final flush. */
  converged: boolean;
  errors: string[];
  /** The longest this process's own event loop was held (ms): a starved client sees its link late. */
  loopMaxMs: number;
}
