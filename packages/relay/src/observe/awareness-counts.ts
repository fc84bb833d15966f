import type { RelayEvents } from '../events/relay-events.js';
import { AWARENESS_DROPS, type AwarenessDrop } from '../server/awareness-gate.js';
import { createRefusalCounters } from '../server/refusal-counters.js';

export interface AwarenessCounts {
  /** Frames forwarded (one per recipient) and dropped, by reason, since the listener started. */
  snapshot(): { readonly forwarded: number; readonly dropped: Readonly<Record<AwarenessDrop, number>> };
  stop(): void;
}

/**
 * Awareness counts kept in memory from the bus (`Relay.awarenessCounts()`, for tests and
 * embedders without a metrics scraper). Counts only: awareness itself is never stored or logged.
 */
export const createAwarenessCounts = (events: RelayEvents): AwarenessCounts => {
  const dropped = createRefusalCounters(AWARENESS_DROPS);
  let forwarded = 0;
  const offs = [
    events.on('awarenessForwarded', ({ recipients }) => {
      forwarded += recipients;
    }),
    events.on('awarenessDropped', ({ reason }) => dropped.count(reason)),
  ];
  return {
    snapshot: () => ({ forwarded, dropped: dropped.snapshot() }),
    stop() {
      for (const off of offs) off();
    },
  };
};
