import type { DocClass, DocId, Envelope } from '@keel/engine';

/** What `client.stats()` reports: for a device panel ("3 changes waiting, crisis plan 40 ms"). */
export interface SyncStats {
  /**
   * Local changes not yet proved in the relay's log: envelopes sealed and not proved, and changes
   * stored but not sealed yet (offline, or waiting for the tier's batch window) — the device's
   * offline queue, as the tier's `offlineQueueLimit` counts it. 0 means everything is safe on the relay.
   */
  readonly outboxDepth: number;
  /**
   * Per document class, the last measured time from a local change to the relay's
   * acknowledgment of the envelope carrying it (offline time included: that is what the user waited).
   */
  readonly lastLatencyMs: Partial<Record<DocClass, number>>;
}

export interface SyncStatsDeps {
  readonly now: () => number;
  /** The class of an open document; undefined once it is closed. */
  readonly classOf: (doc: DocId) => DocClass | undefined;
}

/**
 * Envelopes waiting for an ack, per document, that one device remembers a change time for.
 * Past it the oldest are forgotten (their latency is not measured): a relay that never answers
 * cannot make this grow without end.
 */
const MAX_TRACKED_PER_DOC = 4_096;

/**
 * Measures, per document class, how long a local change takes to be acknowledged by the relay.
 * Fed by three thin hooks of the client: a local change was stored (`changed`), envelopes went
 * out (`pushed`), the relay acknowledged one (`acked`).
 *
 * A change is stamped when it is stored; the first push of an envelope takes the time of the
 * oldest change stamped and not yet sent (sealing merges the oldest pending changes), so the
 * figure is "from the oldest change this envelope carries". Resent envelopes keep their first
 * time. Envelopes restored from storage after a restart carry no time and are not measured.
 */
export class SyncStatsTracker {
  readonly #deps: SyncStatsDeps;
  /** Per document: times of local changes stored and not yet in a pushed envelope, oldest first. */
  readonly #unsent = new Map<DocId, number>();
  /** Per document: counter → time of the oldest change its envelope carries. */
  readonly #inFlight = new Map<DocId, Map<number, number>>();
  readonly #last: Partial<Record<DocClass, number>> = {};

  constructor(deps: SyncStatsDeps) {
    this.#deps = deps;
  }

  /** A local change of `doc` was stored (it waits to be sealed). */
  changed(doc: DocId): void {
    if (!this.#unsent.has(doc)) this.#unsent.set(doc, this.#deps.now());
  }

  /** Envelopes are on their way to the relay (first send or resend). */
  pushed(envs: readonly Envelope[]): void {
    const stamped = new Set<DocId>();
    for (const env of envs) {
      if (env.kind !== 'update') continue;
      const since = this.#unsent.get(env.doc);
      if (since === undefined) continue;
      let flights = this.#inFlight.get(env.doc);
      if (!flights) this.#inFlight.set(env.doc, (flights = new Map()));
      if (flights.has(env.counter)) continue;
      flights.set(env.counter, since);
      stamped.add(env.doc);
      if (flights.size > MAX_TRACKED_PER_DOC) flights.delete(flights.keys().next().value!);
    }
    // Every change stamped so far went into these envelopes (sealing takes the oldest first).
    for (const doc of stamped) this.#unsent.delete(doc);
  }

  /** The relay acknowledged envelope `counter` of `doc`. */
  acked(doc: DocId, counter: number): void {
    const flights = this.#inFlight.get(doc);
    const since = flights?.get(counter);
    if (since === undefined) return;
    flights!.delete(counter);
    if (flights!.size === 0) this.#inFlight.delete(doc);
    const docClass = this.#deps.classOf(doc);
    if (docClass) this.#last[docClass] = Math.max(0, this.#deps.now() - since);
  }

  stats(outboxDepth: number): SyncStats {
    return { outboxDepth, lastLatencyMs: { ...this.#last } };
  }
}
