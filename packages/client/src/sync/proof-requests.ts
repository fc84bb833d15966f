import type { DocId } from '@keel/engine';
import type { DocSync } from './doc-sync.js';

/**
 * How long acks of a non-crisis document are gathered before proof is asked for: one catch-up
 * then proves a burst of writes instead of each write costing its own. Every catch-up is a task
 * in the relay's work queue; at 50 ms the soak's honest crisis p99 rose from ~90 to 200–250 ms,
 * at 250 ms it stayed at ~95 ms (test/attacks/soak.test.ts).
 */
export const PROOF_DEBOUNCE_MS = 250;

export interface ProofRequestsDeps {
  /** Asks the relay for the document's log after `after` (a `sub`). */
  readonly subscribe: (sync: DocSync, after: number) => void;
  readonly doc: (docId: DocId) => DocSync | undefined;
  /** Someone waits for proof (a flush): no debounce. */
  readonly urgent: () => boolean;
  /** Envelopes acknowledged before a finished catch-up that it did not prove: the acks were false. */
  readonly onUnproved: (sync: DocSync, counters: readonly number[]) => void;
}

/**
 * Asks for proof of what the relay acknowledged. An ack only claims that our envelope is in the
 * log; the proof is the log's entry read back by a catch-up from the received position (the
 * relay never sends a connection its own entries live). The catch-up is asked with `proof`, so
 * our own entries come as stubs — counter and signature — not as the ciphertext we hold: the
 * signature binds it, so a stub proves what the envelope would, at ~130 bytes. One request
 * outstanding per document; acks arriving meanwhile are proved by the next one, asked when it
 * finishes.
 */
export class ProofRequests {
  readonly #deps: ProofRequestsDeps;
  /** Per document with a request on its way: the counters claimed when it was asked. */
  readonly #outstanding = new Map<DocId, readonly number[]>();
  /** Documents with acks that arrived after their outstanding request was asked. */
  readonly #again = new Set<DocId>();
  /** At most one per open document. */
  readonly #timers = new Map<DocId, ReturnType<typeof setTimeout>>();

  constructor(deps: ProofRequestsDeps) {
    this.#deps = deps;
  }

  /**
   * The relay acknowledged envelopes of `sync`: crisis documents ask for proof now (any document
   * while `urgent`), others shortly.
   */
  claimed(sync: DocSync): void {
    if (this.#outstanding.has(sync.docId)) {
      this.#again.add(sync.docId);
      return;
    }
    if (sync.crisis || this.#deps.urgent()) {
      clearTimeout(this.#timers.get(sync.docId));
      this.#timers.delete(sync.docId);
      this.#request(sync);
      return;
    }
    if (this.#timers.has(sync.docId)) return;
    this.#timers.set(
      sync.docId,
      setTimeout(() => {
        this.#timers.delete(sync.docId);
        const open = this.#deps.doc(sync.docId);
        if (open) this.#request(open);
      }, PROOF_DEBOUNCE_MS),
    );
  }

  #request(sync: DocSync): void {
    const claimed = sync.claimed();
    if (claimed.length === 0) return;
    this.#outstanding.set(sync.docId, claimed);
    this.#deps.subscribe(sync, sync.proofAfter());
  }

  /**
   * The relay finished a catch-up of the document. What was claimed before the request and is
   * still unproved was not in the log: reported once to `onUnproved` (which resends it).
   */
  onSynced(docId: DocId): void {
    const asked = this.#outstanding.get(docId);
    if (asked === undefined) return;
    this.#outstanding.delete(docId);
    const sync = this.#deps.doc(docId);
    if (!sync) return;
    const still = new Set(sync.claimed());
    const unproved = asked.filter((c) => still.has(c));
    if (unproved.length > 0) this.#deps.onUnproved(sync, unproved);
    if (this.#again.delete(docId)) this.claimed(sync);
  }

  /** The link dropped: the next connection resends and re-subscribes everything anyway. */
  onLinkDown(): void {
    this.#outstanding.clear();
    this.#again.clear();
    for (const timer of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
  }

  close(): void {
    this.onLinkDown();
  }
}
