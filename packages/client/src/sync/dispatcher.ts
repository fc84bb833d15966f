import { type DocId, type Envelope, ErrorCode, type Priority, type Scheduler, type TierPolicy, WireLimits, packByChars } from '@keel/engine';
import type { DocSync } from './doc-sync.js';

/** What a push frame adds around its envelopes, generously. */
const ENVELOPE_OVERHEAD_CHARS = 512;

/**
 * The longest deferral honoured for a non-crisis document. The relay may name up to seven days;
 * an honest one defers for a bandwidth window or until the daily quota resets, and a device
 * that asks again after an hour costs it one refusal.
 */
export const MAX_DEFERRAL_MS = 60 * 60 * 1000;

/** Why a document is held back, and until when. */
interface Hold {
  /** Time the hold ends by itself; +Infinity for a refusal (until reconnect or tier change). */
  readonly until: number;
  /** Lifted by the next reconnect whatever `until` says (refusals; any deferral of a crisis document). */
  readonly untilReconnect: boolean;
}

/**
 * Packs envelopes, in order, into push frames of at most `maxFrameChars` characters and the
 * protocol's envelope count; an envelope that alone exceeds the limit still gets a frame of its
 * own (the relay then refuses it, and says why).
 */
const packFrames = (envs: readonly Envelope[], maxFrameChars: number): Envelope[][] =>
  packByChars(envs, (env) => env.ct.length + ENVELOPE_OVERHEAD_CHARS, WireLimits.maxEnvelopesPerFrame, maxFrameChars);

export interface DispatcherDeps {
  readonly scheduler: Scheduler;
  readonly doc: (docId: DocId) => DocSync | undefined;
  readonly docs: () => Iterable<DocSync>;
  /** Sends a push frame if the link is authenticated; false otherwise (the outbox keeps it). */
  readonly push: (envs: Envelope[]) => boolean;
  /** The relay's frame limit (characters of one frame). */
  readonly maxFrameChars: () => number;
  readonly linkReady: () => boolean;
  readonly now: () => number;
  readonly onError: (error: unknown) => void;
}

/**
 * Carries the scheduler's decisions out: seals each dispatched document into one envelope and
 * pushes it, tracks what is in flight, holds a document back while the relay defers it, and
 * resends outboxes after a reconnect — crisis documents first, every time.
 */
export class Dispatcher {
  readonly #deps: DispatcherDeps;
  /**
   * Dispatches in flight per document, each the counters it sealed (several for an update sent
   * in parts); a dispatch is settled with the scheduler once, when its last counter is.
   */
  readonly #inflight = new Map<DocId, Set<number>[]>();
  /**
   * Documents the relay deferred (until a time) or refused (until reconnect or tier change).
   * Only open documents are held, and each has at most one retry timer: a relay naming a
   * million document ids grows neither.
   */
  readonly #held = new Map<DocId, Hold>();
  readonly #retryTimers = new Map<DocId, ReturnType<typeof setTimeout>>();
  /**
   * Counters resent on this connection because the relay reported a gap or an ack went unproved:
   * each envelope is resent that way at most once per connection, so a relay that keeps
   * answering COUNTER_GAP (or keeps lying) never drives a resend loop.
   */
  readonly #resent = new Map<DocId, Set<number>>();
  /** Documents refilled on this connection (see onReject). */
  readonly #refilled = new Set<DocId>();
  #wake: ReturnType<typeof setTimeout> | undefined;
  #wakeAt = Number.POSITIVE_INFINITY;
  #closed = false;

  constructor(deps: DispatcherDeps) {
    this.#deps = deps;
  }

  /** A persisted local write of `bytes` to a document at `priority`. */
  write(docId: DocId, priority: Priority, bytes: number): void {
    this.#deps.scheduler.write(docId, priority, bytes);
    this.pump();
  }

  /** Takes whatever the scheduler allows now and arms a timer for the next decision. */
  pump(): void {
    if (this.#closed || !this.#deps.linkReady()) return;
    const { scheduler } = this.#deps;
    for (const dispatch of scheduler.take()) {
      const held = this.#held.get(dispatch.docId)?.until;
      if (held !== undefined && held > this.#deps.now()) {
        scheduler.requeue(dispatch, held);
        continue;
      }
      void this.#send(dispatch.docId, dispatch.priority).catch(this.#deps.onError);
    }
    this.#arm(scheduler.nextWakeAt());
  }

  async #send(docId: DocId, priority: Priority): Promise<void> {
    const sync = this.#deps.doc(docId);
    const envs = sync ? await sync.seal(priority) : [];
    if (envs.length === 0) {
      this.#deps.scheduler.settle(docId);
      this.pump();
      return;
    }
    const list = this.#inflight.get(docId) ?? [];
    list.push(new Set(envs.map((env) => env.counter)));
    this.#inflight.set(docId, list);
    this.#pushAll(envs);
  }

  #pushAll(envs: readonly Envelope[]): void {
    for (const frame of packFrames(envs, this.#deps.maxFrameChars())) this.#deps.push(frame);
  }

  #arm(at: number | undefined): void {
    if (at === undefined || this.#closed) return;
    if (this.#wake !== undefined && at >= this.#wakeAt) return;
    clearTimeout(this.#wake);
    this.#wakeAt = at;
    this.#wake = setTimeout(() => {
      this.#wake = undefined;
      this.#wakeAt = Number.POSITIVE_INFINITY;
      this.pump();
    }, Math.max(0, at - this.#deps.now()));
  }

  /** Settles `counter`; with `whole`, its entire dispatch (a refusal ends the dispatch). */
  #settle(docId: DocId, counter: number, whole = false): void {
    const list = this.#inflight.get(docId);
    const i = list?.findIndex((dispatch) => dispatch.has(counter)) ?? -1;
    if (i < 0) return;
    const dispatch = list![i]!;
    dispatch.delete(counter);
    if (dispatch.size > 0 && !whole) return;
    list!.splice(i, 1);
    if (list!.length === 0) this.#inflight.delete(docId);
    this.#deps.scheduler.settle(docId);
  }

  onAck(docId: DocId, counter: number): void {
    this.#settle(docId, counter);
    this.pump();
  }

  /**
   * The relay refused an envelope. With `retryAfterMs` it is a deferral: the document's outbox
   * is resent then (a crisis document's at the next reconnect at the latest; others' after an
   * hour at most). A counter gap is answered by resending what the relay lacks. Anything else
   * waits for a reconnect or a tier change. Never dropped.
   */
  onReject(docId: DocId, counter: number, code: string, retryAfterMs: number | undefined, expected?: number): void {
    this.#settle(docId, counter, true);
    const sync = this.#deps.doc(docId);
    // Not an open document: nothing of ours to hold, and nothing to remember.
    if (!sync) return this.pump();
    if (code === ErrorCode.COUNTER_GAP && retryAfterMs === undefined) {
      // The relay lacks an earlier envelope (an ack that was false, a push that was lost): it is
      // still in the outbox, so resending in counter order fills the gap. Once per counter.
      // When the relay names the counter it expects and this device no longer holds it (a false
      // acknowledgment or a forged echo let it go), the counters from there are refilled and the
      // whole document resealed after them: once per document per connection, whatever the relay
      // names (a relay naming ever lower counters gets no more than one refill's work).
      if (expected !== undefined && !this.#refilled.has(docId)) {
        this.#refilled.add(docId);
        void sync
          .refillFrom(expected)
          .then((n) => {
            if (n === 0) return void this.resendOnce(sync);
            const counters = Array.from({ length: n }, (_, i) => expected + i);
            for (const c of counters) this.#resent.get(docId)?.delete(c);
            this.resendOnce(sync, counters);
            this.pump();
          })
          .catch(this.#deps.onError);
        return this.pump();
      }
      if (!this.#resent.get(docId)?.has(counter)) this.resendOnce(sync);
      return this.pump();
    }
    if (retryAfterMs === undefined) {
      this.#held.set(docId, { until: Number.POSITIVE_INFINITY, untilReconnect: true });
    } else {
      const wait = Math.min(retryAfterMs, MAX_DEFERRAL_MS);
      this.#held.set(docId, { until: this.#deps.now() + wait, untilReconnect: sync.crisis });
      clearTimeout(this.#retryTimers.get(docId));
      this.#retryTimers.set(
        docId,
        setTimeout(() => {
          this.#retryTimers.delete(docId);
          this.#held.delete(docId);
          this.#deps.scheduler.release(docId);
          const open = this.#deps.doc(docId);
          if (open) this.resend([open]);
          this.pump();
        }, wait),
      );
    }
    this.pump();
  }

  /**
   * Resends, in counter order, the outbox envelopes of `sync` (only `counters`, when given) not
   * resent this way on this connection yet. Returns how many were sent.
   */
  resendOnce(sync: DocSync, counters?: readonly number[]): number {
    if (!this.#deps.linkReady()) return 0;
    const done = this.#resent.get(sync.docId) ?? new Set<number>();
    this.#resent.set(sync.docId, done);
    const only = counters && new Set(counters);
    const envs = sync.outbox().filter((env) => !done.has(env.counter) && (!only || only.has(env.counter)));
    for (const env of envs) done.add(env.counter);
    sync.unclaim(envs.map((env) => env.counter));
    this.#pushAll(envs);
    return envs.length;
  }

  /** The link dropped: nothing is in flight any more; the outbox is resent on reconnect. */
  onLinkDown(): void {
    for (const [docId, list] of this.#inflight) for (const _ of list) this.#deps.scheduler.settle(docId);
    this.#inflight.clear();
    this.#resent.clear();
    this.#refilled.clear();
    clearTimeout(this.#wake);
    this.#wake = undefined;
    this.#wakeAt = Number.POSITIVE_INFINITY;
  }

  /** Authenticated again: resend every unproved envelope, crisis documents first. */
  onLinkReady(): void {
    this.#release();
    this.resend([...this.#deps.docs()]);
    this.pump();
  }

  setPolicy(policy: TierPolicy): void {
    this.#deps.scheduler.setPolicy(policy);
  }

  onTierChange(policy: TierPolicy): void {
    this.#deps.scheduler.setPolicy(policy);
    // What the old tier refused (too large, over a cap) may pass now.
    const released = this.#release();
    this.resend(released.map((id) => this.#deps.doc(id)).filter((d): d is DocSync => d !== undefined));
    this.pump();
  }

  /** Seals and pushes every document's pending changes now, ignoring the batch window. */
  async flushNow(priorityOf: (sync: DocSync) => Priority): Promise<void> {
    const docs = [...this.#deps.docs()].filter((d) => d.hasPending && !this.#held.has(d.docId));
    docs.sort((a, b) => priorityOf(b) - priorityOf(a));
    for (const sync of docs) this.#pushAll(await sync.seal(priorityOf(sync)));
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#wake);
    for (const timer of this.#retryTimers.values()) clearTimeout(timer);
    this.#retryTimers.clear();
  }

  /**
   * Lifts refusals and crisis documents' deferrals (not other timed deferrals, which the
   * hour cap bounds); returns the documents released.
   */
  #release(): DocId[] {
    const released: DocId[] = [];
    for (const [docId, hold] of this.#held) {
      if (!hold.untilReconnect) continue;
      this.#held.delete(docId);
      clearTimeout(this.#retryTimers.get(docId));
      this.#retryTimers.delete(docId);
      this.#deps.scheduler.release(docId);
      released.push(docId);
    }
    return released;
  }

  /** Resends the unproved envelopes of `docs`, crisis documents first (not those held back). */
  resend(docs: DocSync[]): void {
    for (const sync of docs.sort((a, b) => b.baseLane - a.baseLane)) {
      if ((this.#held.get(sync.docId)?.until ?? 0) > this.#deps.now()) continue;
      this.#pushAll(sync.outbox());
    }
  }
}
