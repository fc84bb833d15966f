import {
  type DeviceId,
  type DocClass,
  type DocId,
  type Envelope,
  EnvelopeSchema,
  ErrorCode,
  type KeelError,
  type Lane,
  type Seq,
  WireLimits,
  basePriority,
  isCrisisClass,
  isCrisisLane,
  laneCeiling,
  laneFits,
  decodeSnapshotPayload,
  decryptEnvelope,
  encodeSnapshotPayload,
  fromB64,
  sealEnvelope,
  toB64,
  verifyEnvelopeSignature,
} from '@keel/engine';
import * as Y from 'yjs';
import type { Identity } from '../identity.js';
import { type ClientStore, type StorageOp, orderKey } from '../storage/client-store.js';
import { type PartsBudget, SplitUpdates } from './split-updates.js';
import { type DocMeta, DocMetaSchema, decodeJson, encodeJson, markSeq, markWithheld, newDocMeta, rewindTo, seenThrough } from './doc-meta.js';

/** Origin of updates applied from the relay; they are never sent back. */
export const REMOTE_ORIGIN = Symbol('keel:remote');
/** Origin of updates replayed from local storage at open. */
const LOAD_ORIGIN = Symbol('keel:load');

/** A Yjs update that changes nothing: what fills a counter whose envelope is gone. */
const EMPTY_UPDATE = Y.encodeStateAsUpdate(new Y.Doc());

/** Local update log entries folded into one state snapshot. */
const COMPACT_AFTER = 256;

/**
 * Decompressed bytes one `updates` frame may make this device produce and hold, in frame limits
 * (see `maxInflatedBytes`). One envelope may inflate to at most one frame limit (an honest part's
 * plaintext fits a frame), so the first envelope of a frame always fits and catch-up progresses;
 * envelopes past the budget are left unread and fetched again on the next connection.
 */
const FRAME_INFLATE_LIMITS = 2;

/**
 * One log entry as the relay delivered it: the envelope, or — in a catch-up asked with `proof` —
 * a stub naming one of this device's own entries by counter and signature.
 */
export type ReceivedItem = { readonly seq: number; readonly env: Envelope } | { readonly seq: number; readonly own: { readonly counter: number; readonly sig: string } };

/**
 * Keeps a document's content somewhere other than the ClientStore (in browsers: y-indexeddb).
 * It loads stored content into the doc and persists every later update of the doc by itself.
 * The ClientStore then holds only Keel's own state: meta, pending updates, outbox, staged.
 */
export interface ExternalDocState {
  attach(doc: Y.Doc, docId: DocId): Promise<void>;
  detach(doc: Y.Doc): Promise<void>;
}

export interface DocKeys {
  /** The key new writes are sealed under; undefined while this device holds no clean epoch (writes wait). */
  current(): { readonly epoch: number; readonly key: Uint8Array } | undefined;
  get(epoch: number): Uint8Array | undefined;
}

export interface DocSyncDeps {
  readonly store: ClientStore;
  /** Where document content lives; the ClientStore (same atomic batch as the outbox) if absent. */
  readonly docState?: ExternalDocState;
  readonly identity: Identity;
  /** This document's keys: the current epoch's for sealing, any known epoch's for opening. */
  readonly keys: DocKeys;
  /** Verified device keys of the user, by device id. */
  readonly peerKey: (device: DeviceId) => Uint8Array | undefined;
  /** Authors known to be revoked or cut off (from the trust book). */
  readonly nonLive: () => ReadonlySet<DeviceId>;
  /** Local updates of `bytes` were persisted and wait to be sealed. */
  readonly onPending: (sync: DocSync, bytes: number) => void;
  /**
   * Whether remote updates are staged for the app to accept instead of applied (the tier's
   * manual conflict resolution). Never asked for crisis documents: they always merge at once.
   */
  readonly shouldStage: () => boolean;
  /** Whether to deflate payloads before sealing (the app's option; padding is always on). */
  readonly compress: () => boolean;
  /** The most plaintext one envelope may carry; larger updates are sealed in parts (see `maxPartPayloadBytes`). */
  readonly partBytes: () => number;
  /** The most bytes one received envelope may inflate to: the frame limit this device reads with. */
  readonly maxInflatedBytes: () => number;
  /**
   * An `updates` frame decompressed past its budget (FRAME_INFLATE_LIMITS): the rest of it was refused
   * (reported as LIMIT_EXCEEDED) and stays unmarked; reconnecting fetches it again from there.
   */
  readonly overBudget: () => void;
  /** The device's budget for split updates held until complete (see PartsBudget). */
  readonly parts: PartsBudget;
  /** Remote updates were staged; `count` are waiting for the app. */
  readonly onStaged: (sync: DocSync, count: number) => void;
  /** Something in the outbox or pending set changed. */
  readonly onProgress: () => void;
  /**
   * Catch-up must be asked for again from `lastSeq`, with whole envelopes (no `proof`): the
   * received position moved back (a counter gap showed a seq was marked for the wrong
   * envelope), or a proof catch-up named an entry of ours this device cannot account for.
   */
  readonly onRefetch: (sync: DocSync) => void;
  readonly onError: (error: KeelError & { doc: DocId }) => void;
  /** Crisis-lane log entries were applied to the live document (the relay times them: its crisis SLA watch). */
  readonly onCrisisApplied: (doc: DocId, seqs: readonly Seq[]) => void;
  /** A signed envelope was refused for a lane above its class's ceiling: the relay audits the report. */
  readonly onLaneMismatch: (report: { readonly doc: DocId; readonly device: DeviceId; readonly counter: number; readonly lane: Lane }) => void;
}

const keys = (docId: DocId) => ({
  meta: ['doc', docId, 'meta'],
  state: ['doc', docId, 'state'],
  log: (n: number) => ['doc', docId, 'log', orderKey(n)],
  pendingPrefix: ['pending', docId],
  pending: (n: number) => ['pending', docId, orderKey(n)],
  stagedPrefix: ['staged', docId],
  staged: (seq: number) => ['staged', docId, orderKey(seq)],
  outboxPrefix: ['outbox', docId],
  outbox: (counter: number) => ['outbox', docId, orderKey(counter)],
});

/**
 * One open document: its live Y.Doc, local persistence, pending local updates, sealed but
 * unproved envelopes (the outbox), and verification of what arrives from the relay.
 * All storage writes of a document go through one queue, in order.
 *
 * An `ack` is the relay's claim, not a fact: an envelope leaves the outbox only on proof — the
 * device's own envelope, same signature, delivered back in the log at a seq (whole, or as a
 * stub naming its counter and signature), or a verified snapshot whose author counters cover
 * it. A relay that acknowledges and drops loses nothing.
 */
export class DocSync {
  readonly doc: Y.Doc;
  readonly docId: DocId;
  readonly docClass: DocClass;
  /** The class's base priority; the lane of each envelope is decided when it is sealed. */
  readonly baseLane: Lane;
  readonly crisis: boolean;
  readonly #deps: DocSyncDeps;
  readonly #keys: ReturnType<typeof keys>;
  readonly #meta: DocMeta;
  readonly #pending = new Map<number, Uint8Array>();
  readonly #outbox = new Map<number, Envelope>();
  /** Outbox counters the relay acknowledged (on this connection) and not proved yet, with the seq it named. */
  readonly #claimed = new Map<number, number>();
  /** (author, expected counter) gaps already answered by a rewind on this connection: never a loop. */
  readonly #rewound = new Set<string>();
  /** A stub this device could not account for already made it fetch the log in full on this connection. */
  #refetched = false;
  /** Split updates being received, by author; applied once complete, never persisted half-done. */
  readonly #parts: SplitUpdates;
  #staged = 0;
  #unpersisted: Uint8Array[] = [];
  #io: Promise<void> = Promise.resolve();
  #ioScheduled = false;
  /** Head seq the relay reported after catch-up on the current connection. */
  #syncTarget: number | undefined;
  #closed = false;

  private constructor(docId: DocId, meta: DocMeta, deps: DocSyncDeps) {
    this.doc = new Y.Doc({ gc: true });
    this.docId = docId;
    this.docClass = meta.class;
    this.baseLane = basePriority(meta.class);
    this.crisis = isCrisisClass(meta.class);
    this.#deps = deps;
    this.#keys = keys(docId);
    this.#meta = meta;
    this.#parts = new SplitUpdates(deps.parts);
  }

  /** Opens a document from local storage (or creates it). */
  static async load(docId: DocId, docClass: DocClass, name: string, deps: DocSyncDeps): Promise<DocSync> {
    const k = keys(docId);
    const stored = await deps.store.load(k.meta);
    const meta = stored ? DocMetaSchema.parse(decodeJson(stored)) : newDocMeta(docClass, name);
    const sync = new DocSync(docId, meta, deps);
    const external = deps.docState;
    const [state, log, pending, outbox, staged] = await Promise.all([
      external ? undefined : deps.store.load(k.state),
      external ? [] : deps.store.loadRange(['doc', docId, 'log']),
      deps.store.loadRange(k.pendingPrefix),
      deps.store.loadRange(k.outboxPrefix),
      deps.store.loadRange(k.stagedPrefix),
    ]);
    sync.#staged = staged.length;
    if (external) await external.attach(sync.doc, docId);
    const updates = [...(state ? [state] : []), ...log.map((c) => c.data)];
    if (updates.length > 0) Y.applyUpdate(sync.doc, Y.mergeUpdates(updates), LOAD_ORIGIN);
    for (const chunk of pending) sync.#pending.set(Number(chunk.key[2]), chunk.data);
    if (external) await sync.#recoverExternal(pending.map((c) => c.data));
    for (const chunk of outbox) {
      const env = EnvelopeSchema.parse(decodeJson(chunk.data));
      sync.#outbox.set(env.counter, env);
    }
    // Counters are reserved by the outbox write, so the outbox bounds the counter from below.
    for (const counter of sync.#outbox.keys()) sync.#meta.counter = Math.max(sync.#meta.counter, counter);
    if (sync.#freeze(deps.nonLive(), false)) await deps.store.save(k.meta, encodeJson(sync.#meta));
    sync.doc.on('update', (update: Uint8Array, origin: unknown) => {
      if (origin === REMOTE_ORIGIN || origin === LOAD_ORIGIN || sync.#closed) return;
      sync.#unpersisted.push(update);
      sync.#scheduleIO();
    });
    return sync;
  }

  /**
   * With external document state the two stores are written separately, so a crash can leave
   * either ahead. Pending updates are re-applied (content the external store missed), and
   * content the external store has beyond what Keel recorded (`knownSV`) becomes pending, so
   * nothing written locally stays unsent. (Deletions alone do not move a state vector; a crash
   * in the milliseconds between the two writes of a pure deletion is the one case not covered.)
   */
  async #recoverExternal(pending: readonly Uint8Array[]): Promise<void> {
    if (pending.length > 0) Y.applyUpdate(this.doc, Y.mergeUpdates([...pending]), LOAD_ORIGIN);
    if (this.#meta.knownSV === undefined) return;
    const known = fromB64(this.#meta.knownSV);
    const have = Y.decodeStateVector(Y.encodeStateVector(this.doc));
    const behind = [...Y.decodeStateVector(known)].some(([client, clock]) => (have.get(client) ?? 0) < clock);
    if (behind) {
      // The external store lost content Keel had recorded (e.g. an OS crash under relaxed IndexedDB
      // durability): fetch the whole document again from the relay instead of trusting lastSeq.
      Object.assign(this.#meta, { lastSeq: 0, ahead: [], withheld: [], withheldThrough: 0, authors: {}, snapshotBase: 0 });
    }
    const missing = Y.encodeStateAsUpdate(this.doc, known);
    const current = Y.encodeStateVector(this.doc);
    if (toB64(current) === this.#meta.knownSV || Y.decodeUpdate(missing).structs.length === 0) return;
    const n = this.#meta.pendingNext++;
    this.#meta.knownSV = toB64(current);
    await this.#deps.store.batch([
      { op: 'save', key: this.#keys.pending(n), data: missing },
      { op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) },
    ]);
    this.#pending.set(n, missing);
  }

  get lastSeq(): number {
    return this.#meta.lastSeq;
  }

  /**
   * Caught up with the relay on the current connection (withheld entries count as seen) and every
   * local change proved in its log.
   */
  get synced(): boolean {
    return !this.busy && this.caughtUp;
  }

  /**
   * Caught up with the relay on the current connection, whatever local changes are still on their
   * way: what y-websocket calls synced (a provider's `synced`).
   */
  get caughtUp(): boolean {
    return this.#syncTarget !== undefined && seenThrough(this.#meta) >= this.#syncTarget;
  }

  /** Local changes sealed but not yet proved in the relay's log (acknowledged or not). */
  get unconfirmed(): number {
    return this.#outbox.size;
  }

  /** Counters acknowledged by the relay on this connection and not proved since. */
  claimed(): number[] {
    return [...this.#claimed.keys()];
  }

  /**
   * Where a catch-up that proves the claimed envelopes may start: just below the lowest seq the
   * acks named, when everything from `lastSeq` up to there is here already (received or
   * withheld), so entries that arrived live are not downloaded again; `lastSeq` otherwise. The
   * named seqs are the relay's word: a wrong one costs at most a resend, never a seq marked.
   */
  proofAfter(): number {
    const lowest = Math.min(...this.#claimed.values());
    const floor = lowest - 1;
    const { lastSeq, ahead, withheld } = this.#meta;
    // More seqs to cover than are known above lastSeq: some are missing (or the seq is made up).
    if (!Number.isFinite(floor) || floor <= lastSeq || floor - lastSeq > ahead.length + withheld.length) return lastSeq;
    const known = new Set([...ahead, ...withheld]);
    for (let seq = lastSeq + 1; seq <= floor; seq++) if (!known.has(seq)) return lastSeq;
    return floor;
  }

  /** Remote updates waiting for the app to accept them (manual conflict resolution). */
  get staged(): number {
    return this.#staged;
  }

  /** Bytes of local updates not yet sealed. */
  get pendingBytes(): number {
    let bytes = 0;
    for (const update of this.#pending.values()) bytes += update.length;
    return bytes;
  }

  /** True while any local update is not yet proved in the relay's log. */
  get busy(): boolean {
    return this.#unpersisted.length > 0 || this.#ioScheduled || this.#pending.size > 0 || this.#outbox.size > 0;
  }

  get hasPending(): boolean {
    return this.#pending.size > 0;
  }

  /** Entries this document holds in the device's offline queue: unsealed updates and unacknowledged envelopes. */
  get queued(): number {
    return this.#pending.size + this.#outbox.size;
  }

  /**
   * Merges every pending local update of this document into one entry, durably: what the tier's
   * offline queue limit asks for instead of eviction. Nothing is dropped; Yjs merges losslessly.
   */
  compactPending(): Promise<void> {
    return this.#enqueue(async () => {
      if (this.#pending.size < 2) return;
      const entries = [...this.#pending.entries()].sort((a, b) => a[0] - b[0]);
      const merged = Y.mergeUpdates(entries.map((e) => e[1]));
      const n = this.#meta.pendingNext++;
      await this.#deps.store.batch([
        ...entries.map(([i]): StorageOp => ({ op: 'remove', key: this.#keys.pending(i) })),
        { op: 'save', key: this.#keys.pending(n), data: merged },
        { op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) },
      ]);
      this.#pending.clear();
      this.#pending.set(n, merged);
    });
  }

  /** Sealed, unproved envelopes in counter order: resent after every reconnect. */
  outbox(): Envelope[] {
    return [...this.#outbox.values()].sort((a, b) => a.counter - b.counter);
  }

  /**
   * Called when a new connection starts; catch-up must finish before the doc is synced again.
   * Claims and answered gaps were this connection's: everything unproved is resent anyway.
   */
  resetSynced(): void {
    this.#syncTarget = undefined;
    this.#claimed.clear();
    this.#rewound.clear();
    this.#refetched = false;
  }

  #scheduleIO(): void {
    if (this.#ioScheduled) return;
    this.#ioScheduled = true;
    // Edits made in one turn of the event loop are persisted together, in one batch.
    queueMicrotask(() => {
      this.#enqueue(async () => {
        this.#ioScheduled = false;
        await this.#persistLocal();
      });
    });
  }

  #enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.#io.then(task);
    this.#io = run.catch((error: unknown) => {
      this.#deps.onError({ code: ErrorCode.INTERNAL, message: `local storage failed: ${error instanceof Error ? error.message : String(error)}`, doc: this.docId });
    });
    return run;
  }

  async #persistLocal(): Promise<void> {
    if (this.#unpersisted.length === 0) return;
    const merged = this.#unpersisted.length === 1 ? this.#unpersisted[0]! : Y.mergeUpdates(this.#unpersisted);
    this.#unpersisted = [];
    const n = this.#meta.pendingNext++;
    const ops: StorageOp[] = [{ op: 'save', key: this.#keys.pending(n), data: merged }];
    this.#stateOps(ops, merged);
    ops.push({ op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) });
    await this.#deps.store.batch(ops);
    this.#pending.set(n, merged);
    this.#deps.onPending(this, merged.length);
  }

  /**
   * Adds to `ops` what persists `update` into the document's content: a log entry (folded into
   * one state snapshot when the log grows long), or — with external document state, which
   * stores content itself — only the state vector Keel has now recorded.
   */
  #stateOps(ops: StorageOp[], update: Uint8Array): void {
    if (this.#deps.docState) {
      this.#meta.knownSV = toB64(Y.encodeStateVector(this.doc));
      return;
    }
    ops.push({ op: 'save', key: this.#keys.log(this.#meta.logNext++), data: update });
    if (this.#meta.logNext - this.#meta.logBase < COMPACT_AFTER) return;
    ops.push({ op: 'save', key: this.#keys.state, data: Y.encodeStateAsUpdate(this.doc) });
    for (let i = this.#meta.logBase; i < this.#meta.logNext; i++) ops.push({ op: 'remove', key: this.#keys.log(i) });
    this.#meta.logBase = this.#meta.logNext;
  }

  /**
   * Merges every pending local update into one update, reserves the next counter and moves it to
   * the outbox, durably, before it may be sent. An update larger than one envelope may carry is
   * sealed in parts: consecutive counters, each part bound to its index and the part count.
   * Resolves to the envelopes (empty if nothing waits).
   */
  seal(lane: Lane): Promise<Envelope[]> {
    let sealed: Envelope[] = [];
    return this.#enqueue(async () => {
      if (this.#pending.size === 0) return;
      // The oldest pending changes, up to one update's worth (a long offline spell goes out as several).
      const entries: [number, Uint8Array][] = [];
      let taken = 0;
      for (const entry of [...this.#pending.entries()].sort((a, b) => a[0] - b[0])) {
        if (entries.length > 0 && taken + entry[1].length > WireLimits.maxUpdateBytes) break;
        entries.push(entry);
        taken += entry[1].length;
      }
      const merged = entries.length === 1 ? entries[0]![1] : Y.mergeUpdates(entries.map((e) => e[1]));
      const partBytes = this.#deps.partBytes();
      const count = Math.max(1, Math.ceil(merged.length / partBytes));
      if (count > WireLimits.maxPartsPerUpdate || merged.length > WireLimits.maxUpdateBytes) {
        // Kept pending (never dropped); the app hears why it does not leave.
        this.#deps.onError({ code: ErrorCode.LIMIT_EXCEEDED, message: `one change of ${merged.length} bytes is larger than an update may be (${WireLimits.maxUpdateBytes} bytes, ${WireLimits.maxPartsPerUpdate} parts)`, doc: this.docId });
        return;
      }
      const keys = this.#deps.keys.current();
      // No clean key epoch yet (a rotation is on its way): the changes stay pending, never sealed under a dirty key.
      if (!keys) return;
      const first = this.#meta.counter + 1;
      const header = { doc: this.docId, kind: 'update' as const, epoch: keys.epoch, device: this.#deps.identity.device.deviceId, lane };
      const options = { key: keys.key, signingKey: this.#deps.identity.device.secretKey, pad: true, compress: this.#deps.compress() };
      const envs = Array.from({ length: count }, (_, index) =>
        sealEnvelope(
          { ...header, counter: first + index, ...(count > 1 ? { part: { index, count } } : {}) },
          count > 1 ? merged.subarray(index * partBytes, (index + 1) * partBytes) : merged,
          options,
        ),
      );
      this.#meta.counter = first + count - 1;
      this.#meta.maxLane = Math.max(this.#meta.maxLane, lane);
      const ops: StorageOp[] = [
        ...envs.map((env): StorageOp => ({ op: 'save', key: this.#keys.outbox(env.counter), data: encodeJson(env) })),
        ...entries.map(([n]): StorageOp => ({ op: 'remove', key: this.#keys.pending(n) })),
        { op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) },
      ];
      await this.#deps.store.batch(ops);
      for (const [n] of entries) this.#pending.delete(n);
      for (const env of envs) this.#outbox.set(env.counter, env);
      sealed = envs;
    }).then(() => sealed);
  }

  /**
   * The relay expects our counter `expected` next, but this device sealed further and no longer
   * holds every envelope from there on: an acknowledgment or an echo of our own envelope that was
   * false let one go. Nothing is lost — all of it is in the document — so every counter from
   * `expected` on is re-sealed as an empty update (a counter must be filled for the relay and the
   * other devices to take the next one; a part of an update whose first part is gone would never
   * complete), and the whole document becomes a pending update, sealed next. Resolves to how many
   * counters were refilled (0: nothing was missing, or no clean key yet).
   */
  refillFrom(expected: number): Promise<number> {
    let refilled = 0;
    return this.#enqueue(async () => {
      const last = this.#meta.counter;
      let missing = false;
      for (let c = expected; c <= last && !missing; c++) missing = !this.#outbox.has(c);
      if (!missing) return;
      const keys = this.#deps.keys.current();
      if (!keys) return;
      const self = this.#deps.identity.device.deviceId;
      const header = { doc: this.docId, kind: 'update' as const, epoch: keys.epoch, device: self, lane: Math.max(this.baseLane, this.#meta.maxLane) as Lane };
      const options = { key: keys.key, signingKey: this.#deps.identity.device.secretKey, pad: true };
      const fillers: Envelope[] = [];
      for (let c = Math.max(1, expected); c <= last; c++) {
        fillers.push(sealEnvelope({ ...header, counter: c }, EMPTY_UPDATE, options));
        // A long run of counters is signed a slice at a time, so one refill never holds the event loop.
        if (fillers.length % 256 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
      }
      const whole = Y.encodeStateAsUpdate(this.doc);
      const n = this.#meta.pendingNext++;
      // What was taken as proved from `expected` on was not: the relay's own word is all we have below it.
      this.#meta.authors[self] = Math.min(this.#meta.authors[self] ?? 0, expected - 1);
      await this.#deps.store.batch([
        ...fillers.map((env): StorageOp => ({ op: 'save', key: this.#keys.outbox(env.counter), data: encodeJson(env) })),
        { op: 'save', key: this.#keys.pending(n), data: whole },
        { op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) },
      ]);
      for (const env of fillers) {
        this.#outbox.set(env.counter, env);
        this.#claimed.delete(env.counter);
      }
      this.#pending.set(n, whole);
      refilled = fillers.length;
      this.#deps.onPending(this, whole.length);
    }).then(() => refilled);
  }

  /**
   * The relay says it committed our envelope `counter`: a claim. The envelope stays in the outbox
   * (durably) until proved; returns whether it was an unproved envelope not claimed before.
   */
  claim(counter: number, seq: number): boolean {
    if (!this.#outbox.has(counter) || this.#claimed.has(counter)) return false;
    this.#claimed.set(counter, seq);
    return true;
  }

  /** Resent envelopes: their next ack is a new claim, to be proved again. */
  unclaim(counters: readonly number[]): void {
    for (const counter of counters) this.#claimed.delete(counter);
  }

  /**
   * Our envelopes `counters` are in the relay's log — `seq` is where one was seen (absent when a
   * snapshot proved them): they leave the outbox. Adds their removal to `ops`; the caller
   * persists those with the meta.
   */
  #prove(ops: StorageOp[], counters: readonly number[], seq?: number): void {
    const self = this.#deps.identity.device.deviceId;
    for (const counter of counters) {
      if (!this.#outbox.delete(counter)) continue;
      this.#claimed.delete(counter);
      ops.push({ op: 'remove', key: this.#keys.outbox(counter) });
      if ((this.#meta.authors[self] ?? 0) < counter) {
        this.#meta.authors[self] = counter;
        if (seq !== undefined) this.#meta.authorSeq[self] = seq;
      }
    }
  }

  /**
   * Verifies and applies envelopes the relay delivered, in seq order. An envelope that fails
   * any check (wrong document, unknown author, bad signature, counter gap, decryption) is
   * reported and not applied, and its seq is not marked, so it is fetched again later.
   *
   * A counter gap of another author means an envelope of theirs is missing below: its seq may
   * have been marked for something else (a relay can replay an old envelope at any seq). The
   * received position then goes back to where that author's last counter was received, and
   * catch-up is asked for again — once per (author, expected counter) per connection.
   *
   * A stub (`own`) stands for one of our own entries: see #receiveOwn.
   */
  receive(items: readonly ReceivedItem[]): Promise<void> {
    const applied: Uint8Array[] = [];
    const staged: { seq: number; update: Uint8Array }[] = [];
    const proofs: StorageOp[] = [];
    const manual = !this.crisis && this.#deps.shouldStage();
    const self = this.#deps.identity.device.deviceId;
    const perEnvelope = this.#deps.maxInflatedBytes();
    let inflateLeft = FRAME_INFLATE_LIMITS * perEnvelope;
    let refetch = false;
    const crisisApplied: Seq[] = [];
    for (const item of items) {
      const { seq } = item;
      if (seq <= this.#meta.lastSeq || this.#meta.ahead.includes(seq)) continue;
      if ('own' in item) {
        if (!this.#receiveOwn(proofs, seq, item.own) && !this.#refetched) {
          this.#refetched = true;
          refetch = true;
        }
        continue;
      }
      const { env } = item;
      // Signature first: nothing the relay could have forged may even mark a seq as received.
      const error = this.#check(env, self);
      // Our own envelope in the log: the proof its ack only claimed.
      const own = env.device === self && this.#outbox.get(env.counter)?.sig === env.sig;
      if (error === 'duplicate') {
        markSeq(this.#meta, seq);
        if (own) this.#prove(proofs, [env.counter], seq);
        continue;
      }
      if (error) {
        this.#deps.onError({ ...error, doc: this.docId });
        if (error.code === ErrorCode.COUNTER_GAP && this.#rewindFor(env.device)) refetch = true;
        // Signed by its author, who is revoked: refused for good, so it does not hold the document back.
        if (error.code === ErrorCode.DEVICE_REVOKED) markSeq(this.#meta, seq);
        continue;
      }
      if (!laneFits(this.docClass, env.lane)) {
        this.#refuseLane(env, seq);
        continue;
      }
      const maxInflatedBytes = Math.min(perEnvelope, inflateLeft);
      const opened = maxInflatedBytes > 0 ? decryptEnvelope(env, this.#deps.keys.get(env.epoch)!, { maxInflatedBytes }) : undefined;
      if (opened && !opened.ok && opened.error.code === ErrorCode.LIMIT_EXCEEDED) inflateLeft -= maxInflatedBytes;
      if (!opened || (!opened.ok && opened.error.code === ErrorCode.LIMIT_EXCEEDED && maxInflatedBytes < perEnvelope)) {
        this.#deps.onError({ code: ErrorCode.LIMIT_EXCEEDED, message: `an updates frame inflates past ${FRAME_INFLATE_LIMITS * perEnvelope} bytes; its rest is fetched again`, doc: this.docId });
        this.#deps.overBudget();
        break;
      }
      if (!opened.ok) {
        this.#deps.onError({ ...opened.error, doc: this.docId });
        continue;
      }
      inflateLeft -= opened.value.length;
      if (own) this.#prove(proofs, [env.counter], seq);
      // A part waits for the rest of its update; only the whole update is applied, and only then
      // are its seqs marked received (so a restart half-way fetches the parts again).
      const whole = env.part ? this.#parts.collect(env, seq, opened.value) : { update: opened.value, seqs: [seq], lane: env.lane, last: env.counter };
      if (whole === 'dropped') {
        this.#deps.onError({
          code: ErrorCode.LIMIT_EXCEEDED,
          message: `a split update of ${env.device} (${env.part!.count} parts) does not fit what this device holds of unfinished updates; dropped, fetched again later`,
          doc: this.docId,
        });
        continue;
      }
      // Waiting for more parts (dropped ones too: their seqs stay unmarked, fetched again later).
      if (whole === 'waiting') continue;
      // Crisis lanes merge at once even under manual resolution (a crisis assessment, say).
      if (manual && !isCrisisLane(whole.lane)) {
        // Verified and decrypted, kept aside until the app accepts it.
        staged.push({ seq, update: whole.update });
      } else {
        try {
          Y.applyUpdate(this.doc, whole.update, REMOTE_ORIGIN);
        } catch {
          this.#deps.onError({ code: ErrorCode.BAD_PAYLOAD, message: `envelope ${env.device}#${env.counter} is not a Yjs update`, doc: this.docId });
          continue;
        }
        applied.push(whole.update);
        if (isCrisisLane(whole.lane)) crisisApplied.push(...(whole.seqs as Seq[]));
      }
      if ((this.#meta.authors[env.device] ?? 0) < whole.last) {
        this.#meta.authors[env.device] = whole.last;
        this.#meta.authorSeq[env.device] = Math.max(...whole.seqs);
      }
      this.#meta.maxLane = Math.max(this.#meta.maxLane, whole.lane);
      for (const s of whole.seqs) markSeq(this.#meta, s);
    }
    if (crisisApplied.length > 0) this.#deps.onCrisisApplied(this.docId, crisisApplied);
    return this.#enqueue(async () => {
      const ops: StorageOp[] = [...proofs];
      if (applied.length > 0) this.#stateOps(ops, applied.length === 1 ? applied[0]! : Y.mergeUpdates(applied));
      for (const { seq, update } of staged) ops.push({ op: 'save', key: this.#keys.staged(seq), data: update });
      ops.push({ op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) });
      await this.#deps.store.batch(ops);
      if (staged.length > 0) {
        this.#staged += staged.length;
        this.#deps.onStaged(this, this.#staged);
      }
      if (proofs.length > 0) this.#deps.onProgress();
      if (refetch) this.#deps.onRefetch(this);
    });
  }

  /**
   * A stub for one of our own entries at `seq`. It proves the outbox envelope with the same
   * counter and signature (as that envelope itself would: we hold it, its signature binds the
   * ciphertext), and one for a counter already proved only marks its seq — either way this device
   * holds the content. Anything else (a signature we do not hold for a counter not yet proved: a
   * device restored from older storage, or a relay making it up) proves and marks nothing, so
   * `lastSeq` never passes content this device lacks; returns false, and the log is fetched again
   * in full.
   */
  #receiveOwn(proofs: StorageOp[], seq: number, own: { readonly counter: number; readonly sig: string }): boolean {
    const self = this.#deps.identity.device.deviceId;
    if (this.#outbox.get(own.counter)?.sig === own.sig) {
      this.#prove(proofs, [own.counter], seq);
    } else if ((this.#meta.authors[self] ?? 0) < own.counter) {
      return false;
    }
    markSeq(this.#meta, seq);
    return true;
  }

  /**
   * Rewinds the received position for a counter gap of `author`: back to the seq at which its
   * last applied counter arrived (the latest snapshot's base, or the start, when unknown).
   * Returns false when this gap was answered already on this connection.
   */
  #rewindFor(author: DeviceId): boolean {
    const expected = (this.#meta.authors[author] ?? 0) + 1;
    const key = `${author} ${expected}`;
    if (this.#rewound.has(key)) return false;
    this.#rewound.add(key);
    rewindTo(this.#meta, this.#meta.authorSeq[author] ?? this.#meta.snapshotBase);
    // A split update half-collected from the wrong seqs starts over with the refetch.
    this.#parts.drop(author);
    return true;
  }

  /** Log entries received since the last snapshot this device knows of. */
  get sinceSnapshot(): number {
    return this.#meta.lastSeq - this.#meta.snapshotBase;
  }

  /**
   * Seals a snapshot of everything up to `lastSeq` — the applied state plus anything staged —
   * with each author's last counter it includes, so the relay can prune the log it covers.
   * Resolves to undefined when there is nothing new to cover.
   */
  snapshot(minLane: Lane): Promise<Envelope | undefined> {
    let sealed: Envelope | undefined;
    return this.#enqueue(async () => {
      const base = this.#meta.lastSeq;
      if (base <= this.#meta.snapshotBase) return;
      const staged = await this.#deps.store.loadRange(this.#keys.stagedPrefix);
      const state = Y.mergeUpdates([Y.encodeStateAsUpdate(this.doc), ...staged.map((c) => c.data)]);
      const self = this.#deps.identity.device.deviceId;
      // Only proved counters: a reader of this snapshot takes it as proof that the log holds them.
      const authors = { ...this.#meta.authors, [self]: this.#meta.authors[self] ?? 0 };
      const payload = encodeSnapshotPayload({ authors, state });
      // A snapshot travels as one envelope: one larger than a frame may hold is not taken (the
      // log stays as it is, which costs storage, never data).
      if (payload.length > this.#deps.partBytes()) return;
      const counter = this.#meta.snapshotCounter + 1;
      // A snapshot holding crisis content travels (and is visible) as crisis content.
      const lane = Math.max(minLane, this.#meta.maxLane);
      const keys = this.#deps.keys.current();
      if (!keys) return;
      sealed = sealEnvelope(
        { doc: this.docId, kind: 'snapshot', epoch: keys.epoch, device: self, counter, lane, base },
        payload,
        { key: keys.key, signingKey: this.#deps.identity.device.secretKey, pad: true, compress: this.#deps.compress() },
      );
      this.#meta.snapshotCounter = counter;
      this.#meta.snapshotBase = base;
      await this.#deps.store.batch([{ op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) }]);
    }).then(() => sealed);
  }

  /**
   * Loads a snapshot the relay sent ahead of the log after its base: verified like any
   * envelope, then applied (staged under manual resolution), and every seq up to its base
   * counts as received.
   */
  receiveSnapshot(env: Envelope): Promise<void> {
    const base = env.base ?? 0;
    if (env.kind !== 'snapshot' || base <= this.#meta.lastSeq) return Promise.resolve();
    const error =
      this.#checkOrigin(env) ??
      (this.#meta.frozen[env.device] !== undefined ? { code: ErrorCode.DEVICE_REVOKED, message: `snapshot author ${env.device} is revoked` } : undefined);
    if (error) {
      this.#deps.onError({ ...error, doc: this.docId });
      return Promise.resolve();
    }
    if (!laneFits(this.docClass, env.lane)) {
      // Not applied; the log after its base is fetched as it comes, so nothing is marked.
      this.#reportLane(env);
      return Promise.resolve();
    }
    const opened = decryptEnvelope(env, this.#deps.keys.get(env.epoch)!, { maxInflatedBytes: this.#deps.maxInflatedBytes() });
    const payload = opened.ok ? decodeSnapshotPayload(opened.value) : opened;
    if (!payload.ok) {
      this.#deps.onError({ ...payload.error, doc: this.docId });
      return Promise.resolve();
    }
    const manual = !this.crisis && !isCrisisLane(env.lane) && this.#deps.shouldStage();
    if (!manual) {
      try {
        Y.applyUpdate(this.doc, payload.value.state, REMOTE_ORIGIN);
      } catch {
        this.#deps.onError({ code: ErrorCode.BAD_PAYLOAD, message: 'snapshot state is not a Yjs update', doc: this.docId });
        return Promise.resolve();
      }
    }
    for (const [device, counter] of Object.entries(payload.value.authors)) {
      if ((this.#meta.authors[device] ?? 0) >= counter) continue;
      this.#meta.authors[device] = counter;
      this.#meta.authorSeq[device] = base;
    }
    // A verified snapshot whose author counters cover our envelopes proves them (its author applied them from the log).
    const self = this.#deps.identity.device.deviceId;
    const proofs: StorageOp[] = [];
    const covered = payload.value.authors[self] ?? 0;
    this.#prove(proofs, [...this.#outbox.keys()].filter((c) => c <= covered));
    this.#meta.lastSeq = base;
    this.#meta.ahead = this.#meta.ahead.filter((seq) => seq > base);
    this.#meta.withheld = this.#meta.withheld.filter((seq) => seq > base);
    while (this.#meta.ahead[0] === this.#meta.lastSeq + 1) this.#meta.lastSeq = this.#meta.ahead.shift()!;
    this.#meta.snapshotBase = Math.max(this.#meta.snapshotBase, base);
    return this.#enqueue(async () => {
      const ops: StorageOp[] = [...proofs];
      if (manual) ops.push({ op: 'save', key: this.#keys.staged(base), data: payload.value.state });
      else this.#stateOps(ops, payload.value.state);
      ops.push({ op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) });
      await this.#deps.store.batch(ops);
      if (manual) {
        this.#staged += 1;
        this.#deps.onStaged(this, this.#staged);
      }
      if (proofs.length > 0) this.#deps.onProgress();
    });
  }

  /** Applies every staged remote update (the app accepted the changes from another device). */
  acceptStaged(): Promise<number> {
    let accepted = 0;
    return this.#enqueue(async () => {
      const staged = await this.#deps.store.loadRange(this.#keys.stagedPrefix);
      if (staged.length === 0) return;
      const merged = staged.length === 1 ? staged[0]!.data : Y.mergeUpdates(staged.map((c) => c.data));
      Y.applyUpdate(this.doc, merged, REMOTE_ORIGIN);
      const ops: StorageOp[] = staged.map((c): StorageOp => ({ op: 'remove', key: c.key }));
      this.#stateOps(ops, merged);
      ops.push({ op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) });
      await this.#deps.store.batch(ops);
      accepted = staged.length;
      this.#staged = 0;
      this.#deps.onStaged(this, 0);
    }).then(() => accepted);
  }

  /** The relay keeps these seqs from this device (tier without cross-device sync). */
  withhold(seqs: readonly number[], through?: number): Promise<void> {
    markWithheld(this.#meta, seqs);
    if (through !== undefined) this.#meta.withheldThrough = Math.max(this.#meta.withheldThrough, through);
    return this.#enqueue(async () => {
      await this.#deps.store.batch([{ op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) }]);
    });
  }

  /** Integrity checks a receiving device makes before decrypting, the author's signature first. */
  #check(env: Envelope, self: DeviceId): KeelError | 'duplicate' | undefined {
    if (env.kind !== 'update') return { code: ErrorCode.BAD_PAYLOAD, message: 'relay delivered a snapshot as a log entry' };
    const origin = this.#checkOrigin(env);
    if (origin) return origin;
    const last = this.#meta.authors[env.device] ?? 0;
    if (env.counter <= last) return 'duplicate';
    const frozen = this.#meta.frozen[env.device];
    if (frozen !== undefined && env.counter > frozen) {
      return { code: ErrorCode.DEVICE_REVOKED, message: `author ${env.device} is revoked: nothing it wrote after #${frozen} is applied here` };
    }
    // Our own envelopes come back in catch-up (an ack was lost, or content is being rebuilt);
    // the relay enforced their order when it stored them, so no gap check is needed for them.
    // A part's update starts at (counter − index): that must be the author's next counter.
    if (env.device !== self && env.counter - (env.part?.index ?? 0) !== last + 1) {
      return { code: ErrorCode.COUNTER_GAP, message: `author ${env.device} jumped from #${last} to #${env.counter}: an update is missing` };
    }
    return undefined;
  }

  /**
   * A signed envelope on a lane above its document's ceiling: refused for good (neither applied
   * nor staged, and it never raises the lane a snapshot of this document inherits), and skipped
   * with the rest of its update so it holds nothing back: its counters count as seen, so the
   * author's next update follows on without a gap, and its seq as received.
   */
  #refuseLane(env: Envelope, seq: number): void {
    this.#reportLane(env);
    const last = env.counter - (env.part?.index ?? 0) + (env.part?.count ?? 1) - 1;
    if ((this.#meta.authors[env.device] ?? 0) < last) {
      this.#meta.authors[env.device] = last;
      this.#meta.authorSeq[env.device] = Math.max(this.#meta.authorSeq[env.device] ?? 0, seq);
    }
    markSeq(this.#meta, seq);
  }

  #reportLane(env: Envelope): void {
    this.#deps.onError({
      code: ErrorCode.LANE_MISMATCH,
      message: `${env.kind} ${env.device}#${env.counter} came on lane ${env.lane}, above the ${laneCeiling(this.docClass)} its document's class allows: refused`,
      doc: this.docId,
    });
    this.#deps.onLaneMismatch({ doc: this.docId, device: env.device, counter: env.counter, lane: env.lane });
  }

  /** Right document, known epoch, a certified author, and that author's signature. */
  #checkOrigin(env: Envelope): KeelError | undefined {
    if (env.doc !== this.docId) return { code: ErrorCode.NOT_AUTHORIZED, message: 'relay delivered an envelope of another document' };
    if (!this.#deps.keys.get(env.epoch)) return { code: ErrorCode.UNKNOWN_EPOCH, message: `this device has no key for epoch ${env.epoch}` };
    const authorKey = this.#deps.peerKey(env.device);
    if (!authorKey) return { code: ErrorCode.UNKNOWN_DEVICE, message: `author ${env.device} is not a certified device of this user` };
    if (!verifyEnvelopeSignature(env, authorKey)) {
      return { code: ErrorCode.BAD_SIGNATURE, message: `envelope ${env.device}#${env.counter} is not signed by its author` };
    }
    return undefined;
  }

  /** The relay finished catch-up up to `seq`; synced once every seq up to it is here. */
  markSynced(seq: number): void {
    this.#syncTarget = seq;
    // Caught up: from now on what a revoked author sends is new, never something this device missed.
    if (this.#freeze(this.#deps.nonLive(), true)) void this.#saveMeta();
  }

  /**
   * The trust book changed: freezes every newly non-live author at the counter applied from it
   * (only in a document this device already held; a new one freezes once caught up, so content
   * such an author wrote before still reaches a brand-new device), and thaws authors a reset
   * reinstated.
   */
  freezeAuthors(nonLive: ReadonlySet<DeviceId>): Promise<void> {
    return this.#freeze(nonLive, false) ? this.#saveMeta() : Promise.resolve();
  }

  #freeze(nonLive: ReadonlySet<DeviceId>, caughtUp: boolean): boolean {
    let changed = false;
    for (const device of Object.keys(this.#meta.frozen)) {
      if (nonLive.has(device as DeviceId)) continue;
      delete this.#meta.frozen[device];
      changed = true;
    }
    if (!caughtUp && this.#meta.lastSeq === 0) return changed;
    for (const device of nonLive) {
      if (this.#meta.frozen[device] !== undefined) continue;
      this.#meta.frozen[device] = this.#meta.authors[device] ?? 0;
      changed = true;
    }
    return changed;
  }

  #saveMeta(): Promise<void> {
    return this.#enqueue(async () => {
      await this.#deps.store.batch([{ op: 'save', key: this.#keys.meta, data: encodeJson(this.#meta) }]);
    });
  }

  /**
   * Waits for every queued storage write of this document. It awaits the write chain itself:
   * spinning on microtasks until the scheduled batch ran starved the macrotasks an IndexedDB
   * write before it needs, so a close during such a write never returned.
   */
  async settle(): Promise<void> {
    // Each pass waits for real I/O to finish, and ends once no new batch was scheduled meanwhile.
    for (;;) {
      // A batch scheduled in this turn enqueues itself in a microtask queued before this one.
      await Promise.resolve();
      const io = this.#io;
      await io;
      if (!this.#ioScheduled && io === this.#io) return;
    }
  }

  async close(): Promise<void> {
    await this.settle();
    this.#closed = true;
    this.#parts.clear();
    if (this.#deps.docState) await this.#deps.docState.detach(this.doc);
    this.doc.destroy();
  }
}
