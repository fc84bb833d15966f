import { type DeviceId, type Envelope, WireLimits } from '@keel/engine';

/**
 * Bytes of split updates a device holds, waiting for their last parts, across all its documents:
 * taken part by part, given back when an update completes or is dropped.
 */
export interface PartsBudget {
  take(bytes: number): boolean;
  give(bytes: number): void;
  /** Bytes held now. */
  readonly held: number;
}

/**
 * A device's budget for split updates: room for two of the largest updates a device seals
 * (WireLimits.maxUpdateBytes) arriving at once, by default.
 */
export const createPartsBudget = (limit = 2 * WireLimits.maxUpdateBytes): PartsBudget => {
  let held = 0;
  return {
    take(bytes) {
      if (held + bytes > limit) return false;
      held += bytes;
      return true;
    },
    give(bytes) {
      held = Math.max(0, held - bytes);
    },
    get held() {
      return held;
    },
  };
};

/** A split update once its last part is here: its bytes, the seqs of its parts, its highest lane, its last counter. */
export interface WholeUpdate {
  readonly update: Uint8Array;
  readonly seqs: number[];
  readonly lane: number;
  readonly last: number;
}

/** The parts of one split update received so far from one author. */
interface PartialUpdate {
  /** Counter of part 0. */
  readonly first: number;
  readonly count: number;
  readonly payloads: (Uint8Array | undefined)[];
  readonly seqs: number[];
  received: number;
  lane: number;
  /** Payload bytes held, taken from the device's budget. */
  bytes: number;
}

const concat = (chunks: readonly Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
};

/**
 * One document's split updates being received, one per author, held in memory (never persisted
 * half-done) within the device's budget.
 */
export class SplitUpdates {
  readonly #budget: PartsBudget;
  readonly #partial = new Map<DeviceId, PartialUpdate>();

  constructor(budget: PartsBudget) {
    this.#budget = budget;
  }

  /**
   * Keeps a verified, decrypted part; returns the whole update once its last part is here.
   * Parts of an author arrive in counter order (the relay checks it, and the document refuses
   * gaps), so a part that starts another update replaces an unfinished one the relay never
   * completed. Past the budget the whole update is let go: 'dropped'.
   */
  collect(env: Envelope, seq: number, payload: Uint8Array): WholeUpdate | 'waiting' | 'dropped' {
    const { index, count } = env.part!;
    const first = env.counter - index;
    let partial = this.#partial.get(env.device);
    if (!partial || partial.first !== first || partial.count !== count) {
      this.drop(env.device);
      partial = { first, count, payloads: Array.from({ length: count }), seqs: [], received: 0, lane: 1, bytes: 0 };
      this.#partial.set(env.device, partial);
    }
    if (partial.payloads[index] === undefined) {
      if (!this.#budget.take(payload.length)) {
        this.drop(env.device);
        return 'dropped';
      }
      partial.bytes += payload.length;
      partial.payloads[index] = payload;
      partial.received++;
      partial.seqs.push(seq);
      partial.lane = Math.max(partial.lane, env.lane);
    }
    if (partial.received < count) return 'waiting';
    this.drop(env.device);
    return { update: concat(partial.payloads as Uint8Array[]), seqs: partial.seqs, lane: partial.lane, last: first + count - 1 };
  }

  /** Lets go of an author's unfinished update and what it held of the budget. */
  drop(author: DeviceId): void {
    const partial = this.#partial.get(author);
    if (!partial) return;
    this.#partial.delete(author);
    this.#budget.give(partial.bytes);
  }

  clear(): void {
    for (const author of this.#partial.keys()) this.drop(author);
  }
}
