import {
  DEFAULT_TIERS,
  type DeviceCertificate,
  type DeviceId,
  DocClassSchema,
  type DocId,
  type Priority,
  type RelayFrame,
  type RelayId,
  RelayIdSchema,
  type Seq,
  type TierState,
  TierStateSchema,
  WireLimits,
  createScheduler,
  cryptoReady,
  deriveDocId,
  detectCrisis,
  effectivePriority,
  ErrorCode,
  parseAssessment,
  certifyDevice,
  clampRelayFrameLimit,
  createPairingCode,
  fromB64,
  inboundFrameBudget,
  maxPaddedPayloadBytes,
  maxPartPayloadBytes,
  sealToDevice,
  verifyPairingProof,
} from '@keel/engine';
import { ObservableV2 } from 'lib0/observable';
import type * as Y from 'yjs';
import type { AssessmentResult, ClientError, ClientEvents, ClientStatus, DocSpec, KeelClientApi, PairingOffer } from './client-api.js';
import { type Identity, authorizeDevice } from './identity.js';
import { DeviceTrust, type StoredTrust } from './device-trust.js';
import { encodeGrant } from './pairing.js';
import type { ClientStore } from './storage/client-store.js';
import { decodeJson, encodeJson } from './sync/doc-meta.js';
import { Dispatcher } from './sync/dispatcher.js';
import { DocSync, type ExternalDocState } from './sync/doc-sync.js';
import { createPartsBudget } from './sync/split-updates.js';
import { ProofRequests } from './sync/proof-requests.js';
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
}

const TIER_KEY = ['client', 'tier'];
/** The relay id this device pinned, kept next to the tier so a restart keeps the pin. */
const RELAY_KEY = ['client', 'relay'];
/** The crisis-mode flag lives in its own crisis-class document, so it syncs at crisis priority. */
export const CRISIS_MODE_DOC: DocSpec = { class: 'crisis_mode', name: 'state' };

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
  readonly #pairings = new Map<
    string,
    { secret: Uint8Array; expiresAt: number; resolve: (cert: DeviceCertificate) => void; reject: (e: Error) => void; timer: ReturnType<typeof setTimeout> }
  >();
  /** Pairing sessions sent to the relay and not yet confirmed by `pair-opened`. */
  readonly #pairOpens = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();
  readonly #docs = new Map<DocId, DocSync>();
  /** What all documents together hold of split updates waiting for their last part. */
  readonly #parts = createPartsBudget();
  readonly #opening = new Map<DocId, Promise<DocSync>>();
  /** What this device verified about its user's devices; liveness comes from it alone, never from the relay's lists. */
  /** Whom this device trusts and which key it writes under, from signed records only (docs/device-trust.md). */
  readonly #trust: DeviceTrust;
  readonly #revokeWaiters = new Map<DeviceId, () => void>();
  #vouchWaiter: { device: DeviceId; resolve: () => void; reject: (e: Error) => void } | undefined;
  #tier: TierState;
  #crisisMode = false;
  #sessionActive = false;
  #compacting = false;
  readonly #snapshotEvery: number;
  readonly #snapshotting = new Set<DocId>();
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
    this.#snapshotEvery = options.snapshotEvery ?? 1000;
    this.#compress = options.compress ?? false;
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
        const opening = this.#pairOpens.values().next().value;
        if (!error.final && opening && (error.code === ErrorCode.LIMIT_EXCEEDED || error.code.startsWith('PAIRING_'))) {
          opening.reject(toError(error));
        }
        // The relay answers a refused vouch with an error frame; nothing else is in flight for it.
        if (!error.final && this.#vouchWaiter) {
          this.#vouchWaiter.reject(toError(error));
          this.#vouchWaiter = undefined;
        }
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
    }, pinned, { ...DEFAULT_LIVENESS, ...options.liveness });
    this.#dispatcher = new Dispatcher({
      scheduler: createScheduler({ clock: { now: () => Date.now() }, policy: initialTier.policy }),
      doc: (docId) => this.#docs.get(docId),
      docs: () => this.#docs.values(),
      push: (envs) => this.#link.send({ type: 'push', envs }),
      maxFrameChars: () => this.#maxFrameBytes,
      linkReady: () => this.#link.state === 'ready',
      now: () => Date.now(),
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
    return this.#crisisMode;
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
    return (await this.#openSync(spec)).doc;
  }

  async #openSync(spec: DocSpec): Promise<DocSync> {
    if (this.#closed) throw new Error('client is closed');
    const docClass = DocClassSchema.parse(spec.class);
    const docId = this.docId(spec);
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
      });
      this.#opening.set(docId, opening);
    }
    const sync = await opening;
    this.#opening.delete(docId);
    if (!this.#docs.has(docId)) {
      this.#docs.set(docId, sync);
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
  async setCrisisMode(active: boolean, source = 'user'): Promise<void> {
    const doc = await this.open(CRISIS_MODE_DOC);
    doc.transact(() => {
      const state = doc.getMap('crisis');
      state.set('active', active);
      state.set('since', Date.now());
      state.set('source', source);
    });
  }

  /**
   * Records a PHQ-9 or GAD-7 assessment in its own document. One that crosses a crisis threshold
   * (PHQ-9 ≥ 20 or item 9 > 0, GAD-7 ≥ 15) syncs as a crisis assessment and turns crisis mode on.
   */
  async recordAssessment(name: string, input: unknown): Promise<AssessmentResult> {
    const parsed = parseAssessment(input);
    if (!parsed.ok) throw Object.assign(new Error(`${parsed.error.code}: ${parsed.error.message}`), { code: parsed.error.code });
    const result = detectCrisis(parsed.value);
    const doc = await this.open({ class: 'assessment', name });
    doc.transact(() => {
      const map = doc.getMap('assessment');
      map.set('kind', parsed.value.kind);
      map.set('answers', [...parsed.value.answers]);
      map.set('total', result.total);
      map.set('crisis', result.crisis);
      map.set('reasons', [...result.reasons]);
      map.set('at', Date.now());
    });
    if (result.crisis) await this.setCrisisMode(true, 'assessment');
    return { ...result, assessment: parsed.value };
  }

  /** Remote changes waiting for acceptance in a document (tiers with manual conflict resolution). */
  stagedCount(spec: DocSpec): number {
    return this.#docs.get(this.docId(spec))?.staged ?? 0;
  }

  /**
   * Uploads a snapshot of a document now (normally automatic, see `snapshotEvery`); resolves
   * to the seq it covers, or undefined when there is nothing new to cover or no connection.
   */
  async snapshot(spec: DocSpec): Promise<number | undefined> {
    const sync = this.#docs.get(this.docId(spec));
    if (!sync || this.#link.state !== 'ready') return undefined;
    const env = await sync.snapshot(sync.baseLane);
    if (!env) return undefined;
    this.#link.send({ type: 'push', envs: [env] });
    return env.base;
  }

  #maybeSnapshot(sync: DocSync | undefined): void {
    if (!sync || this.#snapshotEvery <= 0 || sync.sinceSnapshot < this.#snapshotEvery) return;
    if (this.#snapshotting.has(sync.docId) || this.#link.state !== 'ready') return;
    this.#snapshotting.add(sync.docId);
    sync
      .snapshot(sync.baseLane)
      .then((env) => {
        if (env) this.#link.send({ type: 'push', envs: [env] });
      })
      .catch((error: unknown) => {
        this.emit('error', [{ code: 'INTERNAL', message: `snapshot failed: ${error instanceof Error ? error.message : String(error)}`, doc: sync.docId }]);
      })
      .finally(() => this.#snapshotting.delete(sync.docId));
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
    await Promise.all([...this.#docs.values()].map((d) => d.close()));
    await this.#pinWrite;
    await this.#trust.close();
    this.#docs.clear();
    this.#setStatus('closed');
    for (const waiter of this.#idleWaiters.splice(0)) waiter.reject(new Error('client closed before its changes were acknowledged'));
  }

  /** The user's live devices as this device verified them (one certificate each), this one included. */
  devices(): DeviceCertificate[] {
    return this.#trust.devices();
  }

  /**
   * Offers a single-use pairing code for a new device, valid for `ttlMs`. Show `code` to the
   * person (text or QR); `linked` resolves with the new device's certificate once it joined
   * (this device certifies it, registers it with the relay and seals the root key to it).
   */
  async startPairing(options: { ttlMs?: number } = {}): Promise<PairingOffer> {
    const ttlMs = options.ttlMs ?? 120_000;
    // Called before the link is up (right after start, say): it waits for it, within the code's lifetime.
    await this.#whenLinkReady(ttlMs);
    const pairing = createPairingCode();
    const expiresAt = Date.now() + ttlMs;
    let cancel = () => {};
    const linked = new Promise<DeviceCertificate>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pairings.delete(pairing.id);
        reject(Object.assign(new Error('PAIRING_EXPIRED: no device joined in time'), { code: 'PAIRING_EXPIRED' }));
      }, ttlMs);
      this.#pairings.set(pairing.id, { secret: pairing.secret, expiresAt, resolve, reject, timer });
      cancel = () => {
        clearTimeout(timer);
        this.#pairings.delete(pairing.id);
        reject(Object.assign(new Error('PAIRING_REFUSED: cancelled'), { code: 'PAIRING_REFUSED' }));
      };
    });
    linked.catch(() => {});
    // The code is shown only once the relay holds the session: a device joining at once finds it.
    try {
      await this.#openPairing(pairing.id, ttlMs);
    } catch (error) {
      cancel();
      throw error;
    }
    return { code: pairing.code, linked, cancel };
  }

  /** Sends `pair-open` and waits for the relay's `pair-opened` (a refusal, a lost link or 5 s: rejected). */
  #openPairing(id: string, ttlMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error('TIMEOUT: the relay did not confirm the pairing session')), RELAY_CONFIRM_MS);
      const done = () => {
        clearTimeout(timer);
        this.#pairOpens.delete(id);
      };
      const fail = (error: Error) => {
        done();
        reject(error);
      };
      this.#pairOpens.set(id, { resolve: () => (done(), resolve()), reject: fail });
      if (!this.#link.send({ type: 'pair-open', id, ttlMs })) fail(new Error('pairing needs a connection to the relay'));
    });
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

  #answerPairing(frame: Extract<RelayFrame, { type: 'pair-request' }>): void {
    const pending = this.#pairings.get(frame.id);
    if (!pending) return;
    this.#pairings.delete(frame.id);
    clearTimeout(pending.timer);
    const deviceKey = fromB64(frame.deviceKey);
    if (!verifyPairingProof(pending.secret, frame.id, deviceKey, frame.proof)) {
      this.#link.send({ type: 'pair-refuse', id: frame.id, reason: 'the joining device does not hold the code' });
      pending.reject(Object.assign(new Error('PAIRING_REFUSED: a device without the code tried to join'), { code: 'PAIRING_REFUSED' }));
      return;
    }
    const grant = authorizeDevice(this.identity, deviceKey);
    this.#trust.add({ certs: [grant.cert] });
    this.#link.send({ type: 'register', cert: grant.cert });
    // The new device pins the deployment this one trusts, not whatever relay it first meets.
    const relayId = this.#link.relayId;
    const payload = encodeGrant({ ...grant, epochs: this.#trust.exportEpochs(), ...(relayId ? { relayId } : {}) });
    const sealed = sealToDevice(payload, deviceKey, pending.secret, frame.id);
    this.#link.send({ type: 'pair-grant', id: frame.id, ...sealed });
    pending.resolve(grant.cert);
  }

  /**
   * Revokes another device of this user: the relay disconnects and refuses it at once — with
   * the devices it registered that no live device vouched for — and a new key epoch, sealed
   * only to the devices that remain (and to the recovery key), protects everything written next.
   */
  async revokeDevice(device: DeviceId): Promise<number> {
    if (this.#link.state !== 'ready') throw new Error('revocation needs a connection to the relay');
    // The relay announces the devices the revocation took with it before the target itself;
    // the trust book computes the same cascade, and waiting lets vouches the relay knows arrive.
    const announced = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, RELAY_CONFIRM_MS);
      this.#revokeWaiters.set(device, () => {
        clearTimeout(timer);
        resolve();
      });
    });
    // Our own signed record, believed at once: the book computes the cascade, the epochs the
    // revoked devices held turn dirty, and a rotation to the remaining live devices starts.
    const rotation = this.#trust.revoke(device);
    await announced;
    this.#revokeWaiters.delete(device);
    if (rotation) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([rotation.echoed, new Promise((resolve) => (timer = setTimeout(resolve, RELAY_CONFIRM_MS)))]);
      clearTimeout(timer);
      return rotation.epoch;
    }
    return this.#trust.writeEpoch;
  }

  /**
   * Vouches for another live device of this user: signs a certificate for it as a second
   * issuer, so it stays live if the device that registered it is revoked (a stolen device
   * takes down only what nobody else vouched for). Resolves once the relay stored it.
   */
  async vouchFor(device: DeviceId): Promise<void> {
    if (this.#link.state !== 'ready') throw new Error('vouching needs a connection to the relay');
    if (this.#vouchWaiter) throw new Error('one vouch at a time');
    const target = this.#trust.certificateOf(device);
    if (!target || !this.#trust.view.live.has(device)) throw new Error(`${device} is not a live device of this user that this device verified`);
    const { user, device: me } = this.identity;
    const cert = certifyDevice(user, me, fromB64(target.deviceKey), Date.now());
    this.#trust.add({ certs: [cert] });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#vouchWaiter = undefined;
        reject(new Error('TIMEOUT: the relay did not confirm the vouch'));
      }, RELAY_CONFIRM_MS);
      const done = (error?: Error) => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve();
      };
      this.#vouchWaiter = { device, resolve: () => done(), reject: (error) => done(error) };
      this.#link.send({ type: 'vouch', cert });
    });
  }

  /** Internal: begins watching the crisis-mode document. */
  async watchCrisisMode(): Promise<void> {
    const doc = await this.open(CRISIS_MODE_DOC);
    const read = () => {
      const active = doc.getMap('crisis').get('active') === true;
      if (active === this.#crisisMode) return;
      this.#crisisMode = active;
      this.emit('crisis', [active]);
    };
    doc.getMap('crisis').observe(read);
    read();
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
      crisisMode: this.#crisisMode,
      sessionActive: this.#sessionActive,
      crisisAssessment: sync.docClass === 'assessment' && sync.doc.getMap('assessment').get('crisis') === true,
    });
  }

  #onLinkState(state: LinkState): void {
    if (state !== 'ready') {
      // The relay keeps pairing sessions per connection: one not yet confirmed is gone with it.
      for (const waiter of this.#pairOpens.values()) waiter.reject(new Error('the connection to the relay dropped before it confirmed the pairing session'));
      for (const d of this.#docs.values()) d.resetSynced();
      this.#dispatcher.onLinkDown();
      this.#proofs.onLinkDown();
    }
    this.#updateStatus();
  }

  /** `synced` needs every document caught up and every local change proved; else `connected`. */
  #updateStatus(): void {
    const state = this.#link.state;
    if (this.#closed) return;
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
    for (const [id, pairing] of this.#pairings) {
      const left = pairing.expiresAt - Date.now();
      if (left >= 1_000 && !this.#pairOpens.has(id)) this.#link.send({ type: 'pair-open', id, ttlMs: left });
    }
    // Only additions: the relay's lists never remove a device or lift a revocation.
    this.#trust.add({ certs: [...frame.certs, ...(frame.revokedCerts ?? [])], revocations: frame.revocations ?? [], reset: frame.reset }, false);
    this.#trust.adoptEpochs(frame.epochs ?? []);
    this.#applyTier(frame.tier, true);
    const docs = [...this.#docs.values()];
    for (const d of docs) d.resetSynced();
    this.#subscribe(docs);
    this.#dispatcher.onLinkReady();
    if (this.#flushRequested) void this.#dispatcher.flushNow((sync) => this.#priorityOf(sync));
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
    if (previous.name !== tier.name || previous.since !== tier.since) this.emit('tier', [tier]);
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
            this.#maybeSnapshot(sync);
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
        this.#onRevoked(frame);
        return;
      case 'vouched':
        if (this.#vouchWaiter?.device === frame.cert.device && frame.cert.issuer === this.identity.device.deviceId) {
          this.#vouchWaiter.resolve();
          this.#vouchWaiter = undefined;
        }
        return;
      case 'epoch':
        if (this.#trust.adoptEpochs([frame.record])) this.#subscribe([...this.#docs.values()]);
        return;
      case 'pair-request':
        this.#answerPairing(frame);
        return;
      case 'pair-opened':
        this.#pairOpens.get(frame.id)?.resolve();
        return;
      case 'pair-grant':
        return;
      case 'error':
        if (frame.doc) this.emit('error', [{ code: frame.code, message: frame.message, doc: frame.doc }]);
        return;
      case 'challenge':
      case 'ready':
      case 'recovery-found':
        return;
    }
  }

  /**
   * Believes a `revoked` frame only for its signed record. One that claims a device this device
   * holds live without a record that verifies is reported and changes nothing.
   */
  #onRevoked(frame: Extract<RelayFrame, { type: 'revoked' }>): void {
    this.#trust.add({ revocations: frame.revocation ? [frame.revocation] : [], reset: frame.reset });
    // Only a hint for timing: our own revocation's cascade was announced.
    this.#revokeWaiters.get(frame.device)?.();
    if (this.#trust.view.live.has(frame.device) && frame.device !== this.identity.device.deviceId) {
      this.emit('error', [{ code: ErrorCode.BAD_SIGNATURE, message: `the relay says ${frame.device} is revoked, with no signed record that shows it` }]);
    }
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
