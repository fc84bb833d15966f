/**
 * In-memory counts of refused requests by code, for refusals that must not cost storage or log
 * lines each (anyone can send them, as fast as the network allows). Shaped for a Prometheus
 * counter with a `code` label: every known code is present from the start, at 0.
 */
/** Where a refusal is counted: in memory (RefusalCounters) or told on the relay's event bus. */
export interface RefusalSink<C extends string> {
  count(code: C): void;
}

export interface RefusalCounters<C extends string> extends RefusalSink<C> {
  /** Totals since the relay started, every code included. */
  snapshot(): Readonly<Record<C, number>>;
}

/** Creates counters for a fixed set of codes; memory does not grow with traffic. */
export const createRefusalCounters = <C extends string>(codes: readonly C[]): RefusalCounters<C> => {
  const totals = new Map<C, number>(codes.map((code) => [code, 0]));
  return {
    count(code) {
      totals.set(code, (totals.get(code) ?? 0) + 1);
    },
    snapshot() {
      return Object.fromEntries(totals) as Record<C, number>;
    },
  };
};
