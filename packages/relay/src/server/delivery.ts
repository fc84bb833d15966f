import { type DeviceId, type DocId, ErrorCode, type RelayFrame, type Seq, type UpdatesItem, type UserId, WireLimits, b64ByteLength, packByChars } from '@keel/engine';
import type { RelayEvents } from '../events/relay-events.js';
import type { LogEntry, RelayStore } from '../storage/relay-store.js';
import type { OutboundQueue } from './outbound-queue.js';
import type { TaskResult, WorkOwner, WorkQueue } from './work-queue.js';

/**
 * Entries per catch-up read, and the most ciphertext one read may hold. The read holds the
 * ciphertext of the device's own entries too when it answers them as stubs, so this bound stays
 * one of ciphertext: it is the relay's memory per read, not what goes on the wire.
 */
const PAGE_ENTRIES = WireLimits.maxEnvelopesPerFrame;
const PAGE_BYTES = 512 * 1024;
/**
 * Ciphertext characters per `updates` frame. Frames are the unit the outbound queue reorders:
 * a crisis frame can overtake queued frames but not one already in the socket, so bulk is cut
 * into frames small enough to pass quickly.
 */
const FRAME_CHARS = 192 * 1024;

export interface DeliveryDeps {
  readonly store: RelayStore;
  readonly work: WorkQueue;
  readonly owner: WorkOwner;
  readonly out: OutboundQueue;
  readonly user: UserId;
  /** The connection's device: its own entries are answered as stubs in a proof catch-up. */
  readonly device: DeviceId;
  /** Documents one connection may be subscribed to at once. */
  readonly maxSubscriptions: number;
  /** `delivered` is told here, per frame of entries queued to the device. */
  readonly events: RelayEvents;
  /** Whether this device may receive an entry now (its tier, crisis lanes, its own entries). */
  visible(entry: Pick<LogEntry, 'env'>): boolean;
  send(frame: RelayFrame, lane: number): void;
}

/** Delivery state of one subscribed document on this connection. */
interface Subscription {
  /** Highest seq sent (or announced as withheld); nothing at or below it is sent again. */
  sent: number;
  /** Still reading the backlog from the log; live entries meanwhile are read from the log too. */
  catchingUp: boolean;
  /** Highest live seq committed while catching up: the catch-up reads at least to it. */
  liveSeen: number;
  /** The snapshot check (the first step of a catch-up) is still to do. */
  fresh: boolean;
  /** An empty read was already retried for a live entry seen meanwhile. */
  rechecked: boolean;
  /** Asked with `proof`: this catch-up sends the device's own entries as stubs, not envelopes. */
  readonly proof: boolean;
}

/** An item to send and the lane of its entry (a stub keeps its entry's lane: proof of a crisis write is crisis traffic). */
interface Outgoing {
  readonly item: UpdatesItem;
  readonly lane: number;
}

/**
 * Splits items into frames of at most PAGE_ENTRIES items and about FRAME_CHARS: an envelope counts
 * its ciphertext, a stub what it is on the wire (~125 characters: a 64-byte signature and two numbers).
 */
const toFrames = (items: readonly Outgoing[]): Outgoing[][] =>
  packByChars(items, ({ item }) => ('env' in item ? item.env.ct.length : JSON.stringify(item).length), PAGE_ENTRIES, FRAME_CHARS);

const maxLane = (items: readonly { lane: number }[]): number => items.reduce((m, i) => Math.max(m, i.lane), 1);

/**
 * What one connection receives: the documents it subscribed to, their catch-up from the log, and
 * live entries afterwards. Catch-up is pulled, not pushed: one bounded page per work-queue turn,
 * and only while the connection's outgoing queue has room, so a device that subscribes to a
 * large document many times over (or never reads) costs the relay one page of memory and a
 * share of the work queue, never the whole log at once.
 *
 * A document id is only ever looked up in this user's namespace: an id nobody wrote, or one
 * another user wrote, is the same empty document here, answered with the same `synced`.
 */
export class Delivery {
  readonly #deps: DeliveryDeps;
  readonly #subs = new Map<DocId, Subscription>();
  /** Documents with catch-up left to do, served in turn. */
  readonly #catchUp = new Set<DocId>();
  #scheduled = false;
  /** A catch-up step is in the work queue, waiting or running. */
  #queued = false;
  #closed = false;

  constructor(deps: DeliveryDeps) {
    this.#deps = deps;
  }

  get subscriptions(): number {
    return this.#subs.size;
  }

  /** Catch-up steps of this connection in the work queue (waiting or running): 0 or 1. */
  get queuedSteps(): number {
    return this.#queued ? 1 : 0;
  }

  /**
   * Starts (or restarts) delivery of each document after the given seq; duplicates count once.
   * With `proof`, the catch-up answers the device's own entries with stubs (see OwnItem).
   * Documents past `maxSubscriptions` are refused (one error for the frame); returns how many.
   */
  subscribe(docs: readonly { readonly doc: DocId; readonly after: Seq; readonly proof?: true | undefined }[]): number {
    const seen = new Set<DocId>();
    let refused: DocId | undefined;
    let refusedCount = 0;
    for (const { doc, after, proof = false } of docs) {
      if (seen.has(doc)) continue;
      seen.add(doc);
      const current = this.#subs.get(doc);
      // Asking again for what is already on its way changes nothing — unless it is on its way as
      // stubs and the device now asks for the envelopes themselves.
      if (current?.catchingUp && current.sent === after && (proof || !current.proof)) continue;
      if (!current && this.#subs.size >= this.#deps.maxSubscriptions) {
        refused ??= doc;
        refusedCount++;
        continue;
      }
      this.#subs.set(doc, { sent: after, catchingUp: true, liveSeen: 0, fresh: true, rechecked: false, proof });
      this.#catchUp.delete(doc);
      this.#catchUp.add(doc);
    }
    this.#schedule();
    // One answer per frame, naming the first refused document: an answer per document would
    // turn a 60 KiB frame into a thousand frames back (the relay's own amplification).
    if (refused !== undefined) {
      this.#deps.send(
        {
          type: 'error',
          code: ErrorCode.LIMIT_EXCEEDED,
          message: `a connection may subscribe to at most ${this.#deps.maxSubscriptions} documents: ${refusedCount} of this frame's documents (from this one on) were not subscribed`,
          doc: refused,
        },
        10,
      );
    }
    return refusedCount;
  }

  /** Whether the connection is subscribed to `doc`. */
  has(doc: DocId): boolean {
    return this.#subs.has(doc);
  }

  unsubscribe(docs: readonly DocId[]): void {
    for (const doc of docs) {
      this.#subs.delete(doc);
      this.#catchUp.delete(doc);
    }
  }

  /**
   * Newly committed entries of a document, from another connection of the user. Returns whether
   * they were queued now; false while the document's catch-up runs (it reads them from the log).
   */
  deliver(docId: DocId, entries: readonly LogEntry[]): boolean {
    const sub = this.#subs.get(docId);
    if (!sub || entries.length === 0) return false;
    if (sub.catchingUp) {
      sub.liveSeen = Math.max(sub.liveSeen, entries[entries.length - 1]!.seq);
      return false;
    }
    this.#sendEntries(docId, sub, entries);
    return true;
  }

  /** This connection's own entries were committed at `seq`: its device has them already. */
  markOwn(docId: DocId, seq: number): void {
    const sub = this.#subs.get(docId);
    if (sub && !sub.catchingUp) sub.sent = Math.max(sub.sent, seq);
  }

  /** The outgoing queue has room again: resume catch-up. */
  onRoom(): void {
    this.#schedule();
  }

  close(): void {
    this.#closed = true;
    this.#subs.clear();
    this.#catchUp.clear();
  }

  #schedule(): void {
    if (this.#scheduled || this.#closed || this.#catchUp.size === 0) return;
    this.#scheduled = true;
    this.#queued = true;
    this.#deps.work.enqueue(this.#deps.owner, async () => {
      try {
        return await this.#step();
      } finally {
        // The next step (if any) was enqueued by #step itself, and set the flag again.
        if (!this.#scheduled) this.#queued = false;
      }
    });
  }

  /** One bounded step of catch-up: one page of one document, then the next document's turn. */
  async #step(): Promise<TaskResult> {
    this.#scheduled = false;
    if (this.#closed) return;
    // A full outgoing queue stops catch-up here; the queue calls onRoom once it drains.
    if (!this.#deps.out.hasRoom()) return;
    const doc = this.#catchUp.values().next().value;
    if (doc === undefined) return;
    this.#catchUp.delete(doc);
    const sub = this.#subs.get(doc);
    if (sub?.catchingUp) await this.#catchUpPage(doc, sub);
    this.#schedule();
  }

  async #catchUpPage(doc: DocId, sub: Subscription): Promise<void> {
    const { store, user } = this.#deps;
    if (sub.fresh) {
      sub.fresh = false;
      // A device behind the latest snapshot starts from it: the log it covers may be pruned.
      const base = await store.snapshotBase(user, doc);
      if (base > sub.sent) {
        const snapshot = await store.getSnapshot(user, doc);
        if (this.#subs.get(doc) !== sub || !snapshot) return this.#requeue(doc, sub);
        if (this.#deps.visible(snapshot)) {
          this.#deps.send({ type: 'snapshot', doc, env: snapshot.env }, snapshot.env.lane);
          this.#tellDelivered(doc, snapshot.env.lane, 1, b64ByteLength(snapshot.env.ct.length));
        } else {
          // Not this device's to read on this tier: what the log no longer holds counts as withheld.
          this.#deps.send({ type: 'withheld', doc, seqs: [], through: base }, 1);
        }
        sub.sent = base;
        return this.#requeue(doc, sub);
      }
    }
    const page = await store.readLog(user, doc, sub.sent as Seq, PAGE_ENTRIES, PAGE_BYTES);
    if (this.#subs.get(doc) !== sub) return;
    this.#sendEntries(doc, sub, page);
    if (page.length > 0) {
      sub.rechecked = false;
      return this.#requeue(doc, sub);
    }
    // An entry committed while this read was on its way is read once more. (If it is gone after
    // that, a snapshot pruned it; the device asks again from its snapshot.)
    if (sub.liveSeen > sub.sent && !sub.rechecked) {
      sub.rechecked = true;
      return this.#requeue(doc, sub);
    }
    sub.catchingUp = false;
    this.#deps.send({ type: 'synced', doc, seq: sub.sent as Seq }, 10);
  }

  #tellDelivered(doc: DocId, lane: number, entries: number, bytes: number): void {
    this.#deps.events.emit('delivered', { user: this.#deps.user, device: this.#deps.device, doc, lane, entries, bytes });
  }

  #requeue(doc: DocId, sub: Subscription): void {
    if (this.#subs.get(doc) === sub && sub.catchingUp) this.#catchUp.add(doc);
  }

  #sendEntries(docId: DocId, sub: Subscription, entries: readonly LogEntry[]): void {
    const fresh = entries.filter((e) => e.seq > sub.sent);
    if (fresh.length === 0) return;
    const visible = fresh.filter((e) => this.#deps.visible(e));
    const withheld = fresh.filter((e) => !this.#deps.visible(e)).map((e) => e.seq);
    // Stubs only in the catch-up a proof sub asked for; live entries (another connection of the
    // same device) come whole, as the device may not hold them.
    const stubs = sub.proof && sub.catchingUp;
    const outgoing = visible.map(
      (e): Outgoing => ({
        item: stubs && e.env.device === this.#deps.device ? { seq: e.seq, own: { counter: e.env.counter, sig: e.env.sig } } : { seq: e.seq, env: e.env },
        lane: e.env.lane,
      }),
    );
    for (const page of toFrames(outgoing)) {
      const lane = maxLane(page);
      this.#deps.send({ type: 'updates', doc: docId, items: page.map((o) => o.item) }, lane);
      if (this.#deps.events.has('delivered')) {
        const bytes = page.reduce((n, { item }) => n + ('env' in item ? b64ByteLength(item.env.ct.length) : 0), 0);
        this.#tellDelivered(docId, lane, page.length, bytes);
      }
    }
    for (let i = 0; i < withheld.length; i += PAGE_ENTRIES) {
      this.#deps.send({ type: 'withheld', doc: docId, seqs: withheld.slice(i, i + PAGE_ENTRIES) }, 1);
    }
    sub.sent = fresh[fresh.length - 1]!.seq;
  }
}
