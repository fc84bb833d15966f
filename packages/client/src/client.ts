import {
  assertNever,
  fromB64,
  verifyCrisisSignal,
  type CrisisSignal,
  DEFAULT_TIERS,
  type DeviceCertificate,
  type DeviceId,
  DocClassSchema,
  type DocId,
  type Priority,
  type RelayFrame,
  type RelayId,
  RelayIdSchema,
  SignupTokenSchema,
  type Seq,
  type TierState,
  TierStateSchema,
  WireLimits,
  createScheduler,
  cryptoReady,
  deriveDocId,
  effectivePriority,
  mayHoldCrisisAssessment,
  ErrorCode,
  clampRelayFrameLimit,
  inboundFrameBudget,
  maxPaddedPayloadBytes,
  maxPartPayloadBytes,
} from '@keel/engine';
import { ObservableV2 } from 'lib0/observable';
import type * as Y from 'yjs';
import type { ClientError, ClientEvents, ClientStatus, DocSpec, KeelClientApi } from './client-api.js';
import { CRISIS_MODE_DOC, CrisisMode, type AssessmentResult, isCrisisAssessment } from './crisis-mode.js';
import type { Identity } from './identity.js';
import { DeviceAdmin } from './device-admin.js';
import { DeviceTrust, type StoredTrust } from './device-trust.js';
import { type PairingOffer, PairingHost } from './pairing-host.js';
import { type KeelProvider, ProviderRegistry } from './provider.js';
import type { ClientStore } from './storage/client-store.js';
import { type LocalData, clearStore } from './storage/local-data.js';
import { decodeJson, encodeJson } from './sync/doc-meta.js';
import { AwarenessSync } from './sync/awareness-sync.js';
import { Dispatcher } from './sync/dispatcher.js';
import { DocSync, type ExternalDocState } from './sync/doc-sync.js';
import { SnapshotUploads } from './sync/snapshot-uploads.js';
import { createPartsBudget } from './sync/split-updates.js';
import { ProofRequests } from './sync/proof-requests.js';
import { type SyncStats, SyncStatsTracker } from './sync/sync-stats.js';
import { type BackoffOptions, createBackoff } from './transport/backoff.js';
import { DEFAULT_LIVENESS, type LinkState, type LivenessOptions, RelayLink, type WebSocketFactory, type WebSocketLike } from './transport/relay-link.js';

export type { ClientError, ClientEvents, ClientStatus, DocSpec } from './client-api.js';

export interface KeelClientOptions {
  /** Relay WebSocket URL, e.g. ws://127.0.0.1:8787. */
  readonly url: string;
  readonly identity: Identity;
  readonly storage: ClientStore;
  /** WebSocket implementation; defaults to the global one (browsers). In Node pass `ws`. */
  readonly WebSocket?: (new (url: string) => unknown) | undefined;
  readonly backoff?: BackoffOptions;
  /**
   * Where document content lives (in browsers: y-indexeddb); `storage` then keeps only Keel's
   * own state. Absent: content lives in `storage` too.
   */
  readonly documentState?: ExternalDocState;
  /**
   * Upload an encrypted snapshot of a document once this many log entries arrived since the
   * last one, so the relay can prune its log and new devices start fast. 0 turns it off.
   * Default 1000.
   */
  readonly snapshotEvery?: number;
  /**
   * The relay deployment's id (its `--relay-id`), pinned before first contact: the device
   * answers no other relay's challenge. Recommended when the app knows its deployment.
   * Absent: the identity's (a linked device gets its linking device's pin), else the one kept
   * in `storage`, else the id of the first relay that accepts this device. Replaces a kept pin.
   */
  readonly relayId?: string | undefined;
  /**
   * A signup token from the relay's operator (`keel-relay signup-token create`), for a relay that
   * creates users only with one (`--registration token`). Sent only while this device's
   * certificates could still create the user (its first device); a linked, paired or recovered
   * device of an existing user needs none. A refused token is a final `error`
   * (`SIGNUP_TOKEN_REQUIRED` or `SIGNUP_TOKEN_INVALID`).
   */
  readonly signupToken?: string | undefined;
  /**
   * Deflate larger updates before sealing when that makes them smaller. Off by default, and never
   * switched on by the relay or the tier: padding hides an update's size only to within a power
   * of two, and a deflated size tells the relay how repetitive the text is (a size leak). Turn it
   * on only where bandwidth matters more than that.
   */
  readonly compress?: boolean;
  /**
   * How the client notices a dead link by itself: a ping every `intervalMs` after the relay
   * accepted the device, and the link counts as dead (status `offline`, error `LINK_DEAD`,
   * reconnect with backoff) when nothing at all comes back within `timeoutMs` after one.
   * Default 2.5 s and 5 s: a half-open link is found within 7.5 s.
   */
  readonly liveness?: Partial<LivenessOptions>;
  /**
   * Wall clock, ms since the epoch; default `Date.now`. The client's own timestamps and timers
   * (scheduling, pairing lifetimes, crisis and assessment records) read it, so tests can drive
   * time. Every device must use real time: timestamps are compared across devices.
   */
  readonly now?: () => number;
  /**
   * How `signOut({ wipe: true })` removes this client's local stores (storage/local-data.ts).
   * Default: every entry of `storage` is removed (the store object is the app's and stays open).
   */
  readonly localData?: LocalData;
  /**
   * The platform's answer to keeping the data (`navigator.storage.persist()`), when it comes: a
   * browser may wait for the person to answer a prompt, so the client does not wait for it.
   */
  readonly storagePersisted?: Promise<boolean | undefined>;
  /**
   * Public keys (base64url Ed25519) of the operator's crisis authority. Given: an external crisis
   * signal is acted on only with a valid signature by one of them, over this deployment, this
   * user and the signal (no relay can fake one). Absent: the relay's word is taken — a signal
   * can only turn crisis mode on (priority up, help shown), never read, change or hold back data.
   */
  readonly crisisAuthorityKeys?: readonly string[];
}

const TIER_KEY = ['client', 'tier'];
/** The relay id this device pinned, kept next to the tier so a restart keeps the pin. */
const RELAY_KEY = ['client', 'relay'];
export { CRISIS_MODE_DOC };

/** How long the client waits for the relay to confirm a revocation, a vouch or a pairing session. */
const RELAY_CONFIRM_MS = 5_000;

/** Until the relay says otherwise, a device assumes the free tier. */
const UNKNOWN_TIER: TierState = { name: 'trial', policy: DEFAULT_TIERS.trial, since: 0 };

const toError = (e: ClientError): Error => Object.assign(new Error(`${e.code}: ${e.message}`), { code: e.code });

/**
 * Keel's client: opens documents by class and name as live Y.Docs, keeps them in local storage,
 * seals every local change and syncs it through the relay when the tier's scheduler says so
 * (crisis documents at once), and applies verified changes of the user's other devices.
 */
export class KeelClient extends ObservableV2<ClientEvents> implements KeelClientApi {
  readonly identity: Identity;
  readonly #store: ClientStore;
  readonly #documentState: ExternalDocState | undefined;
  readonly #link: RelayLink;
  readonly #dispatcher: Dispatcher;
  readonly #proofs: ProofRequests;
  readonly #pairing: PairingHost;
  readonly #docs = new Map<DocId, DocSync>();
  /** What all documents together hold of split updates waiting for their last part. */
  readonly #parts = createPartsBudget();
  readonly #opening = new Map<DocId, Promise<DocSync>>();
  /** Documents being closed (their last provider handle went); opening one again waits for it. */
  readonly #closing = new Map<DocId, Promise<void>>();
  /** Each open document's y-protocols Awareness, sealed and sent through the relay. */
  readonly #awareness: AwarenessSync;
  /** y-websocket-shaped handles the app holds on documents. */
  readonly #providers: ProviderRegistry;
  /** What this device verified about its user's devices; liveness comes from it alone, never from the relay's lists. */
  /** Whom this device trusts and which key it writes under, from signed records only (docs/device-trust.md). */
  readonly #trust: DeviceTrust;
  readonly #admin: DeviceAdmin;
  #tier: TierState;
  readonly #crisis: CrisisMode;
  readonly #crisisAuthorityKeys: readonly Uint8Array[];
  readonly #stats: SyncStatsTracker;
  readonly #localData: LocalData;
  #storagePersisted: boolean | undefined;
  readonly #now: () => number;
  #sessionActive = false;
  #compacting = false;
  readonly #snapshots: SnapshotUploads;
  /** A flush() waits: on reconnect, send everything at once instead of by the batch window. */
  #flushRequested = false;
  #status: ClientStatus = 'connecting';
  /** The relay's frame limit, from its last `ready` (clamped to what every device accepts); its default until then. */
  #maxFrameBytes: number = WireLimits.defaultMaxFrameBytes;
  #idleWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];
  #closed = false;
  #finalError: ClientError | undefined;
  /** Writing the relay pin taken on first contact; close() waits for it. */
  #pinWrite: Promise<void> = Promise.resolve();
  readonly #compress: boolean;

  constructor(
    options: KeelClientOptions,
    initialTier: TierState = UNKNOWN_TIER,
    storedTrust?: StoredTrust,
    storedRelay?: RelayId,
  ) {
    super();
    this.identity = options.identity;
    this.#store = options.storage;
    this.#documentState = options.documentState;
    this.#tier = initialTier;
    this.#snapshots = new SnapshotUploads({
      every: options.snapshotEvery ?? 1000,
      online: () => this.#link.state === 'ready',
      isOpen: (sync) => this.#docs.get(sync.docId) === sync,
      push: (env) => this.#link.send({ type: 'push', envs: [env] }),
      onError: (error) => this.emit('error', [error]),
    });
    this.#compress = options.compress ?? false;
    this.#now = options.now ?? Date.now;
    this.#localData = options.localData ?? clearStore(options.storage);
    void options.storagePersisted?.then((answer) => (this.#storagePersisted = answer));
    this.#stats = new SyncStatsTracker({ now: this.#now, classOf: (doc) => this.#docs.get(doc)?.docClass });
    this.#crisisAuthorityKeys = (options.crisisAuthorityKeys ?? []).map((key) => fromB64(key));
    this.#crisis = new CrisisMode({ open: (spec) => this.open(spec), now: this.#now, onChange: (active) => this.emit('crisis', [active]) });
    this.#trust = new DeviceTrust(
      {
        identity: options.identity,
        store: options.storage,
        send: (frame) => this.#link.send(frame),
        online: () => this.#link.state === 'ready' && !this.#closed,
        hasPending: () => [...this.#docs.values()].some((d) => d.hasPending),
        onDevices: () => this.emit('devices', [this.devices()]),
        onNonLive: (devices) => {
          for (const sync of this.#docs.values()) void sync.freezeAuthors(devices);
        },
        onWriteKey: () => {
          // Changes that waited for a clean key go out now.
          for (const sync of this.#docs.values()) if (sync.hasPending) this.#dispatcher.write(sync.docId, this.#priorityOf(sync), sync.pendingBytes);
          if (this.#flushRequested) void this.#dispatcher.flushNow((sync) => this.#priorityOf(sync));
        },
        onError: (error) => this.emit('error', [error]),
      },
      storedTrust,
    );
    const Impl = options.WebSocket ?? (globalThis as { WebSocket?: new (url: string) => unknown }).WebSocket;
    if (!Impl) throw new Error('no WebSocket implementation: pass one as options.WebSocket (in Node: the ws package)');
    const factory: WebSocketFactory = (url) => new Impl(url) as WebSocketLike;
    const pinned = pinnedUpFront(options) ?? storedRelay;
    this.#link = new RelayLink(options.url, options.identity, factory, createBackoff(options.backoff), {
      onState: (state) => this.#onLinkState(state),
      onReady: (frame) => this.#onReady(frame),
      onFrame: (frame) => this.#onFrame(frame),
      onError: (error) => {
        // Another device published that epoch number first (both saw the same revocation): its
        // record reaches this device too, and the next decision takes it or rotates above it.
        if (!error.final && error.code === ErrorCode.UNKNOWN_EPOCH && this.#trust.rotationRefused()) return;
        // A refused pairing session (too many open, say) is answered with an error frame.
        this.#pairing.onRelayError(error);
        // The relay answers a refused vouch with an error frame; nothing else is in flight for it.
        this.#admin.onRelayError(error);
        if (error.final) {
          this.#finalError = error;
          for (const waiter of this.#idleWaiters.splice(0)) waiter.reject(toError(error));
        }
        this.emit('error', [error]);
      },
      // A 4003 close is final only once this device holds a verified record that revokes it
      // (sent by the relay just before the close, or kept in the trust book from earlier).
      holdsOwnRevocation: () => this.#trust.selfRevoked,
      onPin: (relay) => {
        this.#pinWrite = this.#store.save(RELAY_KEY, encodeJson(relay)).catch((error: unknown) => {
          this.emit('error', [{ code: 'INTERNAL', message: `cannot store the relay pin: ${error instanceof Error ? error.message : String(error)}` }]);
        });
      },
    }, pinned, { ...DEFAULT_LIVENESS, ...options.liveness }, options.signupToken === undefined ? undefined : SignupTokenSchema.parse(options.signupToken));
    this.#admin = new DeviceAdmin({
      identity: options.identity,
      trust: this.#trust,
      send: (frame) => this.#link.send(frame),
      online: () => this.#link.state === 'ready',
      now: this.#now,
      confirmMs: RELAY_CONFIRM_MS,
      onError: (error) => this.emit('error', [error]),
    });
    this.#pairing = new PairingHost({
      identity: options.identity,
      trust: this.#trust,
      send: (frame) => this.#link.send(frame),
      whenLinkReady: (timeoutMs) => this.#whenLinkReady(timeoutMs),
      relayId: () => this.#link.relayId,
      now: this.#now,
      confirmMs: RELAY_CONFIRM_MS,
    });
    this.#dispatcher = new Dispatcher({
      scheduler: createScheduler({ clock: { now: this.#now }, policy: initialTier.policy }),
      doc: (docId) => this.#docs.get(docId),
      docs: () => this.#docs.values(),
      push: (envs) => {
        this.#stats.pushed(envs);
        return this.#link.send({ type: 'push', envs });
      },
      maxFrameChars: () => this.#maxFrameBytes,
      linkReady: () => this.#link.state === 'ready',
      now: this.#now,
      onError: (error) =>
        this.emit('error', [{ code: 'INTERNAL', message: `dispatch failed: ${error instanceof Error ? error.message : String(error)}` }]),
    });
    this.#proofs = new ProofRequests({
      // `proof`: our own entries come back as stubs (counter, signature), not the ciphertext we hold.
      subscribe: (sync, after) => this.#link.send({ type: 'sub', docs: [{ doc: sync.docId, after: after as Seq, proof: true }] }),
      doc: (docId) => this.#docs.get(docId),
      urgent: () => this.#idleWaiters.length > 0,
      // Acknowledged, yet not in the log a catch-up just read: resent (once per connection).
      onUnproved: (sync, counters) => this.#dispatcher.resendOnce(sync, counters),
    });
    this.#awareness = new AwarenessSync({
      identity: options.identity,
      send: (frame) => this.#link.send(frame),
      liveKey: (device) => this.#trust.view.live.get(device),
      now: this.#now,
      crossDevice: () => this.#tier.policy.crossDevice,
      onError: (error) => this.emit('error', [error]),
    });
    this.#providers = new ProviderRegistry({
      status: () => this.#status,
      caughtUp: (docId) => this.#docs.get(docId)?.caughtUp ?? false,
      release: (docId) => this.#closeDoc(docId),
    });
    // Offline too: a device that knows one of its epochs is dirty keeps new changes pending.
    this.#trust.chooseWriteEpoch();
    this.#link.start();
  }

  get status(): ClientStatus {
    return this.#status;
  }

  /**
   * Local changes sealed but not yet proved in the relay's log: an acknowledgment alone does not
   * count, only this device's envelope seen back in the log — whole, or as a stub with its
   * counter and signature — or a snapshot covering it.
   */
  get unconfirmed(): number {
    let count = 0;
    for (const d of this.#docs.values()) count += d.unconfirmed;
    return count;
  }

  /**
   * When the relay last answered this device (any frame; the link pings it every few seconds),
   * as milliseconds since the epoch; undefined before the first answer. An app shows how old its
   * last confirmed contact is from this.
   */
  get lastContactAt(): number | undefined {
    return this.#link.lastContactAt;
  }

  /** Outbox depth and, per document class, the last time from a local change to the relay's ack (sync/sync-stats.ts). */
  stats(): SyncStats {
    let queued = 0;
    for (const d of this.#docs.values()) queued += d.queued;
    return this.#stats.stats(queued);
  }

  /**
   * Whether the browser agreed to keep this origin's data under storage pressure (asked by
   * `createBrowserClient`); undefined until it answered, and where it was not asked or cannot
   * answer (Node, older browsers).
   */
  get storagePersisted(): boolean | undefined {
    return this.#storagePersisted;
  }

  /** The tier the relay enforces for this user (last known while offline). */
  get tier(): TierState {
    return this.#tier;
  }

  /** The relay id this device is pinned to; undefined until first contact when none was given. */
  get relayId(): RelayId | undefined {
    return this.#link.relayId;
  }

  /** Whether the user is in crisis mode (on any of their devices). */
  get crisisMode(): boolean {
    return this.#crisis.active;
  }

  /** The opaque id a document has on the relay. */
  docId(spec: DocSpec): DocId {
    return deriveDocId(this.identity.user.docIdKey, DocClassSchema.parse(spec.class), spec.name);
  }

  /**
   * Opens a document: loads it from local storage at once (offline works), then keeps it in
   * sync. Opening the same document twice returns the same Y.Doc.
   */
  async open(spec: DocSpec): Promise<Y.Doc> {
    const sync = await this.#openSync(spec);
    this.#providers.hold(sync.docId);
    return sync.doc;
  }

  /**
   * A y-websocket-shaped handle on a document (`doc`, `awareness`, `synced`, events `sync` and
   * `status`) for editor bindings. Each call returns a new handle on the same live doc and
   * awareness; destroying the last one closes the document (see KeelProvider).
   */
  async provider(spec: DocSpec): Promise<KeelProvider> {
    const sync = await this.#openSync(spec);
    return this.#providers.create(sync.docId, sync.doc, this.#awareness.use(sync.docId)!);
  }

  /**
   * Closes one document: its awareness states leave the other devices, the relay stops sending
   * it, and its local writes finish (pending changes are stored and go out after it is opened
   * again; sealed ones stay in its outbox) before its Y.Doc is destroyed.
   */
  async #closeDoc(docId: DocId): Promise<void> {
    const sync = this.#docs.get(docId);
    if (!sync || this.#closed) return;
    this.#docs.delete(docId);
    this.#awareness.detach(docId);
    if (this.#link.state === 'ready') this.#link.send({ type: 'unsub', docs: [docId] });
    const closing = sync.close().finally(() => this.#closing.delete(docId));
    this.#closing.set(docId, closing);
    await closing;
    this.#updateStatus();
  }

  async #openSync(spec: DocSpec): Promise<DocSync> {
    if (this.#closed) throw new Error('client is closed');
    const docClass = DocClassSchema.parse(spec.class);
    const docId = this.docId(spec);
    await this.#closing.get(docId);
    const open = this.#docs.get(docId);
    if (open) return open;
    let opening = this.#opening.get(docId);
    if (!opening) {
      opening = DocSync.load(docId, docClass, spec.name, {
        store: this.#store,
        ...(this.#documentState ? { docState: this.#documentState } : {}),
        identity: this.identity,
        keys: this.#trust.keysFor(docId),
        peerKey: (device) => this.#trust.view.authors.get(device),
        nonLive: () => this.#trust.view.nonLive,
        onPending: (sync, bytes) => {
          this.#stats.changed(sync.docId);
          this.#dispatcher.write(sync.docId, this.#priorityOf(sync), bytes);
          this.#enforceQueueLimit();
          // A local change not yet proved: no longer synced.
          this.#updateStatus();
          if (!this.#trust.canWrite) this.#trust.rotate();
        },
        shouldStage: () => this.#tier.policy.conflictResolution === 'manual',
        // The app's choice only: what the relay says (its tier) never turns compression on.
        compress: () => this.#compress,
        // Sealed parts are padded, so a part's padded body must still fit one frame.
        partBytes: () => maxPaddedPayloadBytes(maxPartPayloadBytes(this.#maxFrameBytes)),
        maxInflatedBytes: () => inboundFrameBudget(this.#maxFrameBytes),
        overBudget: () => this.#link.reconnect(),
        parts: this.#parts,
        onStaged: (sync, count) => this.emit('staged', [{ doc: sync.docId, count }]),
        onProgress: () => this.#checkProgress(),
        onRefetch: (sync) => {
          if (this.#link.state === 'ready') this.#subscribe([sync]);
        },
        onError: (error) => this.emit('error', [error]),
        // Answered at once (the relay times the crisis SLA by it); lost with the link, which is fine:
        // a device that is not connected is not waited for.
        onCrisisApplied: (doc, seqs) => {
          if (this.#link.state !== 'ready') return;
          for (let i = 0; i < seqs.length; i += WireLimits.maxEnvelopesPerFrame) {
            this.#link.send({ type: 'receipt', doc, seqs: seqs.slice(i, i + WireLimits.maxEnvelopesPerFrame) });
          }
        },
        onLaneMismatch: (report) => {
          if (this.#link.state === 'ready') this.#link.send({ type: 'report', code: ErrorCode.LANE_MISMATCH, ...report });
        },
      });
      this.#opening.set(docId, opening);
    }
    const sync = await opening;
    this.#opening.delete(docId);
    if (!this.#docs.has(docId)) {
      this.#docs.set(docId, sync);
      this.#awareness.attach(docId, sync.doc, this.#trust.keysFor(docId));
      if (sync.hasPending) this.#dispatcher.write(docId, this.#priorityOf(sync), sync.pendingBytes);
      if (sync.hasPending && !this.#trust.canWrite) this.#trust.rotate();
      if (this.#link.state === 'ready') this.#startDoc(sync);
      this.#updateStatus();
    }
    return this.#docs.get(docId)!;
  }

  /**
   * Marks a therapeutic session (breathing, MBCT) active or not. Active sessions are escalated
   * where the tier allows it, during a grace period, and always in crisis mode.
   */
  setTherapeuticSession(active: boolean): void {
    this.#sessionActive = active;
  }

  /** Turns crisis mode on or off for every device of the user; syncs at crisis priority. */
  setCrisisMode(active: boolean, source = 'user'): Promise<void> {
    return this.#crisis.set(active, source);
  }

  /**
   * Records a PHQ-9 or GAD-7 form, complete or partial (`null` = not answered yet), in its own
   * document. PHQ-9 item 9 above 0 is a crisis as soon as it is given; the totals (PHQ-9 ≥ 20,
   * GAD-7 ≥ 15) count on complete forms. A crisis syncs as a crisis assessment and turns crisis
   * mode on. See crisis-mode.ts.
   */
  recordAssessment(name: string, input: unknown): Promise<AssessmentResult> {
    return this.#crisis.recordAssessment(name, input);
  }

  /** Remote changes waiting for acceptance in a document (tiers with manual conflict resolution). */
  stagedCount(spec: DocSpec): number {
    return this.#docs.get(this.docId(spec))?.staged ?? 0;
  }

  /**
   * Uploads a snapshot of a document now (normally automatic, see `snapshotEvery`); resolves
   * to the seq it covers, or undefined when there is nothing new to cover or no connection.
   */
  snapshot(spec: DocSpec): Promise<number | undefined> {
    return this.#snapshots.now(this.#docs.get(this.docId(spec)));
  }

  /** Applies the staged changes from other devices to a document; resolves to how many. */
  async acceptStaged(spec: DocSpec): Promise<number> {
    const sync = this.#docs.get(this.docId(spec));
    return sync ? sync.acceptStaged() : 0;
  }

  /**
   * Sends every pending change now, ignoring the tier's batch window (the relay still enforces
   * bandwidth and data limits), and resolves when all of them are proved in the relay's log
   * (this device saw them come back; an ack alone is only the relay's claim). Waits while
   * offline; rejects if the relay refuses this device for good. The changes stay stored either way.
   */
  async flush(): Promise<void> {
    await Promise.all([...this.#docs.values()].map((d) => d.settle()));
    if (this.#link.state === 'ready') await this.#dispatcher.flushNow((sync) => this.#priorityOf(sync));
    if (![...this.#docs.values()].some((d) => d.busy)) return;
    // Offline now: send at once on reconnect, not at the end of the batch window.
    this.#flushRequested = true;
    if (this.#finalError) throw toError(this.#finalError);
    await new Promise<void>((resolve, reject) => this.#idleWaiters.push({ resolve, reject }));
  }

  /**
   * Resolves once every local change made so far is in local storage (not yet at the relay):
   * the leader tab acknowledges a follower tab's edit only then.
   */
  async persisted(): Promise<void> {
    await Promise.all([...this.#docs.values()].map((d) => d.settle()));
  }

  /**
   * Resolves once every open document has caught up with the relay on this connection and every
   * local change is proved in its log (status `synced`).
   * Rejects if the relay refuses this device for good (revoked, unknown, bad signature).
   */
  whenSynced(): Promise<void> {
    if (this.#status === 'synced') return Promise.resolve();
    if (this.#finalError) return Promise.reject(toError(this.#finalError));
    return this.#untilStatus((status) => (status === 'synced' ? true : undefined));
  }

  /**
   * Waits for a status change after which `settle` says the wait is over (true: resolves; an
   * Error: rejects with it); a final error rejects, and so does `timeoutMs` when given.
   */
  #untilStatus(settle: (status: ClientStatus) => true | Error | undefined, timeoutMs?: number, timeoutMessage = 'TIMEOUT'): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => finish(new Error(timeoutMessage)), timeoutMs);
      const onStatus = (status: ClientStatus) => {
        const outcome = settle(status);
        if (outcome !== undefined) finish(outcome === true ? undefined : outcome);
      };
      const onError = (error: ClientError) => {
        if (error.final) finish(toError(error));
      };
      const finish = (error?: Error) => {
        clearTimeout(timer);
        this.off('status', onStatus);
        this.off('error', onError);
        if (error) reject(error);
        else resolve();
      };
      this.on('status', onStatus);
      this.on('error', onError);
    });
  }

  /** Disconnects and waits for local writes to finish; the storage stays open (the app owns it). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#link.stop();
    this.#dispatcher.close();
    this.#proofs.close();
    this.#awareness.close();
    await Promise.all([...this.#docs.values()].map((d) => d.close()));
    await this.#pinWrite;
    await this.#trust.close();
    this.#docs.clear();
    this.#setStatus('closed');
    this.#providers.clear();
    for (const waiter of this.#idleWaiters.splice(0)) waiter.reject(new Error('client closed before its changes were acknowledged'));
  }

  /**
   * Signs this device out: closes the client (local writes settle first). With `wipe`, then
   * removes every local store of it — Keel's state (outbox, counters, key epochs, trust book)
   * and every document's content — and resolves once they are gone. The identity is the app's:
   * it removes that itself (README: "Where to keep the identity").
   */
  async signOut(options: { readonly wipe?: boolean } = {}): Promise<void> {
    await this.close();
    if (options.wipe) await this.#localData.wipe();
  }

  /** The user's live devices as this device verified them (one certificate each), this one included. */
  devices(): DeviceCertificate[] {
    return this.#trust.devices();
  }

  /**
   * Offers a single-use pairing code for a new device, valid for `ttlMs`. Show `code` to the
   * person (text or QR); `linked` resolves with the new device's certificate once it joined
   * (this device certifies it, registers it with the relay and seals the root key to it).
   * Waits for the link when called before it is up; see pairing-host.ts.
   */
  startPairing(options: { ttlMs?: number } = {}): Promise<PairingOffer> {
    return this.#pairing.start(options);
  }

  /** Resolves once the link is authenticated; rejects after `timeoutMs`, on a final error, or when the client closes. */
  #whenLinkReady(timeoutMs: number): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('client is closed'));
    if (this.#link.state === 'ready') return Promise.resolve();
    if (this.#finalError) return Promise.reject(toError(this.#finalError));
    return this.#untilStatus(
      (status) => (this.#link.state === 'ready' ? true : status === 'closed' ? new Error('client closed') : undefined),
      timeoutMs,
      'TIMEOUT: no connection to the relay',
    );
  }

  /**
   * Revokes another device of this user: the relay refuses it (with what only it vouched for)
   * and a new key epoch, sealed to the devices that remain, protects what is written next.
   * Resolves to that epoch. See device-admin.ts.
   */
  revokeDevice(device: DeviceId): Promise<number> {
    return this.#admin.revoke(device);
  }

  /** Vouches for another live device of this user as a second issuer; resolves once the relay stored it (device-admin.ts). */
  vouchFor(device: DeviceId): Promise<void> {
    return this.#admin.vouch(device);
  }

  /** Internal: begins watching the crisis-mode document. */
  watchCrisisMode(): Promise<void> {
    return this.#crisis.watch();
  }

  /**
   * The tier's offline queue limit, honoured without losing anything: past it, each document's
   * pending updates are merged into one entry. Crisis documents are compacted too (merging is
   * not eviction) and still replay first. What cannot be merged further (one entry per document)
   * stays: an accepted write is never dropped.
   */
  #enforceQueueLimit(): void {
    if (this.#compacting) return;
    let queued = 0;
    for (const d of this.#docs.values()) queued += d.queued;
    if (queued <= this.#tier.policy.offlineQueueLimit) return;
    this.#compacting = true;
    void Promise.all([...this.#docs.values()].map((d) => d.compactPending()))
      .catch((error: unknown) => {
        this.emit('error', [{ code: 'INTERNAL', message: `queue compaction failed: ${error instanceof Error ? error.message : String(error)}` }]);
      })
      .finally(() => {
        this.#compacting = false;
      });
  }

  #priorityOf(sync: DocSync): Priority {
    return effectivePriority({
      docClass: sync.docClass,
      tier: this.#tier.name,
      policy: this.#tier.policy,
      crisisMode: this.#crisis.active,
      sessionActive: this.#sessionActive,
      crisisAssessment: mayHoldCrisisAssessment(sync.docClass) && isCrisisAssessment(sync.doc),
    });
  }

  #onLinkState(state: LinkState): void {
    if (state !== 'ready') {
      // The relay keeps pairing sessions per connection: one not yet confirmed is gone with it.
      this.#pairing.onLinkDown();
      for (const d of this.#docs.values()) d.resetSynced();
      this.#dispatcher.onLinkDown();
      this.#proofs.onLinkDown();
      this.#awareness.onLinkDown();
    }
    this.#updateStatus();
  }

  /** `synced` needs every document caught up and every local change proved; else `connected`. */
  #updateStatus(): void {
    const state = this.#link.state;
    if (this.#closed) return;
    this.#providers.refresh();
    if (state === 'ready') {
      this.#setStatus([...this.#docs.values()].every((d) => d.synced) ? 'synced' : 'connected');
    } else if (state === 'offline' || state === 'stopped') {
      this.#setStatus('offline');
    } else {
      this.#setStatus('connecting');
    }
  }

  #setStatus(status: ClientStatus): void {
    if (status === this.#status) return;
    this.#status = status;
    this.emit('status', [status]);
  }

  #onReady(frame: Extract<RelayFrame, { type: 'ready' }>): void {
    this.#maxFrameBytes = clampRelayFrameLimit(frame.limits?.maxFrameBytes ?? WireLimits.defaultMaxFrameBytes);
    this.#trust.onReady();
    // Pairing sessions opened on the last connection died with it: opened again for what is left of their time.
    this.#pairing.onReady();
    // Only additions: the relay's lists never remove a device or lift a revocation.
    this.#trust.add({ certs: [...frame.certs, ...(frame.revokedCerts ?? [])], revocations: frame.revocations ?? [], reset: frame.reset }, false);
    this.#trust.adoptEpochs(frame.epochs ?? []);
    this.#applyTier(frame.tier, true);
    const docs = [...this.#docs.values()];
    for (const d of docs) d.resetSynced();
    this.#subscribe(docs);
    this.#dispatcher.onLinkReady();
    if (this.#flushRequested) void this.#dispatcher.flushNow((sync) => this.#priorityOf(sync));
    // After the resends: on the wire, presence never goes ahead of a crisis change.
    this.#awareness.subscribed(docs.map((d) => d.docId));
    this.#updateStatus();
  }

  #subscribe(docs: readonly DocSync[]): void {
    for (let i = 0; i < docs.length; i += WireLimits.maxDocsPerSubscribe) {
      const page = docs.slice(i, i + WireLimits.maxDocsPerSubscribe);
      this.#link.send({ type: 'sub', docs: page.map((d) => ({ doc: d.docId, after: d.lastSeq as Seq })) });
    }
  }

  #startDoc(sync: DocSync): void {
    sync.resetSynced();
    this.#subscribe([sync]);
    this.#dispatcher.resend([sync]);
    this.#dispatcher.pump();
    this.#awareness.subscribed([sync.docId]);
  }

  /** Adopts the relay's tier; on `ready` the reconnect path resends, so only the policy changes here. */
  #applyTier(tier: TierState, onReady = false): void {
    const previous = this.#tier;
    this.#tier = tier;
    void this.#store.save(TIER_KEY, encodeJson(tier)).catch((error: unknown) => {
      this.emit('error', [{ code: 'INTERNAL', message: `cannot store tier: ${error instanceof Error ? error.message : String(error)}` }]);
    });
    if (onReady) this.#dispatcher.setPolicy(tier.policy);
    else this.#dispatcher.onTierChange(tier.policy);
    if (previous.name !== tier.name || previous.since !== tier.since || previous.graceEndsAt !== tier.graceEndsAt) this.emit('tier', [tier]);
    // Entries the relay withheld under the old tier arrive once the new one allows them.
    if (!onReady && !previous.policy.crossDevice && tier.policy.crossDevice && this.#link.state === 'ready') this.#subscribe([...this.#docs.values()]);
    if (tier.policy.conflictResolution === 'automatic') {
      for (const d of this.#docs.values()) if (d.staged > 0) void d.acceptStaged();
    }
  }

  #onFrame(frame: RelayFrame): void {
    switch (frame.type) {
      case 'ack':
        // A claim: it lets the next write go, but the envelope stays until its proof is seen
        // (the relay-chosen seq is never marked as received).
        for (const { doc, counter, seq, kind } of frame.acks) {
          if (kind === 'snapshot') continue;
          const sync = this.#docs.get(doc);
          if (sync?.claim(counter, seq)) this.#proofs.claimed(sync);
          this.#stats.acked(doc, counter);
          this.#dispatcher.onAck(doc, counter);
        }
        return;
      case 'reject':
        // A refused snapshot costs nothing: the next one covers more.
        if (frame.kind === 'snapshot') return;
        // The envelope stays in the outbox: a refused write is reported, never dropped.
        this.#dispatcher.onReject(frame.doc, frame.counter, frame.code, frame.retryAfterMs, frame.expected);
        if (frame.retryAfterMs !== undefined) this.emit('deferred', [{ doc: frame.doc, code: frame.code, retryAfterMs: frame.retryAfterMs }]);
        else this.emit('error', [{ code: frame.code, message: frame.message, doc: frame.doc }]);
        return;
      case 'updates': {
        const sync = this.#docs.get(frame.doc);
        if (sync) {
          void sync.receive(frame.items).then(() => {
            this.#checkProgress();
            // A document closed meanwhile (its last provider went) is snapshotted once it is open again.
            if (this.#docs.get(sync.docId) === sync) this.#snapshots.maybe(sync);
          });
        }
        return;
      }
      case 'snapshot': {
        const sync = this.#docs.get(frame.doc);
        if (sync) void sync.receiveSnapshot(frame.env).then(() => this.#checkProgress());
        return;
      }
      case 'withheld': {
        const sync = this.#docs.get(frame.doc);
        if (sync) void sync.withhold(frame.seqs, frame.through).then(() => this.#checkProgress());
        return;
      }
      case 'synced': {
        const sync = this.#docs.get(frame.doc);
        sync?.markSynced(frame.seq);
        // Judged once what arrived before it is applied: only then is an unproved claim false.
        if (sync) void sync.settle().then(() => this.#proofs.onSynced(frame.doc));
        this.#checkProgress();
        return;
      }
      case 'tier':
        this.#applyTier(frame.tier);
        return;
      case 'device':
        // A new device or a vouch: added if it verifies; it never lifts a revocation (only a verified reset keeping the device does).
        this.#trust.add({ certs: [frame.cert] });
        return;
      case 'revoked':
        this.#admin.onRevoked(frame);
        return;
      case 'vouched':
        this.#admin.onVouched(frame);
        return;
      case 'epoch':
        if (this.#trust.adoptEpochs([frame.record])) this.#subscribe([...this.#docs.values()]);
        return;
      case 'pair-request':
        this.#pairing.onRequest(frame);
        return;
      case 'pair-opened':
        this.#pairing.onOpened(frame.id);
        return;
      case 'pair-grant':
        return;
      case 'awareness':
        this.#awareness.receive(frame.aw);
        return;
      case 'awareness-gone':
        this.#awareness.gone(frame.device);
        return;
      case 'crisis-signal':
        this.#onCrisisSignal(frame.signal);
        return;
      case 'error':
        if (frame.doc) this.emit('error', [{ code: frame.code, message: frame.message, doc: frame.doc }]);
        return;
      case 'challenge':
      case 'ready':
      case 'recovery-found':
      // The link answers these itself (liveness).
      case 'pong':
        return;
      default:
        return assertNever(frame, 'relay frame');
    }
  }

  /** An external crisis signal for this user: verified when the app pinned crisis authority keys, then acted on once. */
  #onCrisisSignal(signal: CrisisSignal): void {
    const relay = this.#link.relayId;
    if (this.#crisisAuthorityKeys.length > 0) {
      const statement = { relay: relay!, user: this.identity.user.userId, id: signal.id, at: signal.at, reason: signal.reason };
      if (relay === undefined || signal.sig === undefined || !verifyCrisisSignal(statement, signal.sig, this.#crisisAuthorityKeys)) {
        this.emit('error', [{ code: ErrorCode.BAD_SIGNATURE, message: `crisis signal ${signal.id} is not signed by this app's crisis authority: ignored` }]);
        return;
      }
    }
    // Caught up first (bounded), so a signal already acted on — or ended by the user since — is known.
    const caughtUp = () => Promise.race([this.whenSynced().catch(() => undefined), new Promise<void>((resolve) => setTimeout(resolve, 5_000))]);
    void this.#crisis.externalSignal(signal, caughtUp).catch((error: unknown) => {
      this.emit('error', [{ code: 'INTERNAL', message: `crisis signal ${signal.id}: ${error instanceof Error ? error.message : String(error)}` }]);
    });
  }

  #checkProgress(): void {
    this.#updateStatus();
    if (this.#idleWaiters.length > 0 && ![...this.#docs.values()].some((d) => d.busy)) {
      this.#flushRequested = false;
      for (const waiter of this.#idleWaiters.splice(0)) waiter.resolve();
    }
  }
}

/** The pin an app or a linking device gave (never the relay): the option first, then the identity's. */
const pinnedUpFront = (options: KeelClientOptions): RelayId | undefined =>
  options.relayId !== undefined ? RelayIdSchema.parse(options.relayId) : options.identity.relayId;

/** The pin kept in storage; one that does not parse counts as none (first contact pins again). */
const loadRelayPin = async (storage: ClientStore): Promise<RelayId | undefined> => {
  const bytes = await storage.load(RELAY_KEY);
  if (!bytes) return undefined;
  try {
    const parsed = RelayIdSchema.safeParse(decodeJson(bytes));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
};

/**
 * Creates a client: restores the last known tier and the relay pin, starts connecting and
 * watching crisis mode.
 */
export const createClient = async (options: KeelClientOptions): Promise<KeelClient> => {
  await cryptoReady();
  const stored = await options.storage.load(TIER_KEY);
  const tier = stored ? TierStateSchema.safeParse(decodeJson(stored)) : undefined;
  const trust = await DeviceTrust.load(options.storage);
  const keptRelay = await loadRelayPin(options.storage);
  const upFront = pinnedUpFront(options);
  // Kept, so the pin survives a later start that passes neither the option nor that identity.
  if (upFront !== undefined && upFront !== keptRelay) await options.storage.save(RELAY_KEY, encodeJson(upFront));
  const client = new KeelClient(
    options,
    tier?.success ? tier.data : UNKNOWN_TIER,
    trust,
    keptRelay,
  );
  await client.watchCrisisMode();
  return client;
};
