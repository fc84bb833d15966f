import {
  type DeviceCertificate,
  type DeviceId,
  type DocClass,
  DocClassSchema,
  type DocId,
  type KeelError,
  type RelayFrame,
  type Seq,
  WireLimits,
  cryptoReady,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  verifyCertificateChain,
} from '@keel/engine';
import { ObservableV2 } from 'lib0/observable';
import type * as Y from 'yjs';
import type { Identity } from './identity.js';
import type { ClientStore } from './storage/client-store.js';
import { DocSync } from './sync/doc-sync.js';
import { type BackoffOptions, createBackoff } from './transport/backoff.js';
import { type LinkState, RelayLink, type WebSocketFactory, type WebSocketLike } from './transport/relay-link.js';

export type ClientStatus = 'connecting' | 'connected' | 'offline' | 'synced' | 'closed';

export type ClientError = KeelError & { readonly doc?: DocId; readonly final?: boolean };

export type ClientEvents = {
  /** Connection and sync state: connecting → connected → synced, offline between attempts. */
  status: (status: ClientStatus) => void;
  /** An integrity failure, a refusal by the relay, or a local storage fault. Nothing bad is applied. */
  error: (error: ClientError) => void;
};

export interface DocSpec {
  readonly class: DocClass;
  /** Free-form name within the class; never leaves the device in clear. */
  readonly name: string;
}

export interface KeelClientOptions {
  /** Relay WebSocket URL, e.g. ws://127.0.0.1:8787. */
  readonly url: string;
  readonly identity: Identity;
  readonly storage: ClientStore;
  /** WebSocket implementation; defaults to the global one (browsers). In Node pass `ws`. */
  readonly WebSocket?: (new (url: string) => unknown) | undefined;
  readonly backoff?: BackoffOptions;
}

/**
 * Keel's client: opens documents by class and name as live Y.Docs, keeps them in local storage,
 * seals every local change and syncs it through the relay, and applies verified changes of the
 * user's other devices.
 */
export class KeelClient extends ObservableV2<ClientEvents> {
  readonly identity: Identity;
  readonly #store: ClientStore;
  readonly #link: RelayLink;
  readonly #epochSecret: Uint8Array;
  readonly #docs = new Map<DocId, DocSync>();
  readonly #opening = new Map<DocId, Promise<DocSync>>();
  readonly #dirty = new Set<DocSync>();
  #peers = new Map<DeviceId, Uint8Array>();
  #certs: DeviceCertificate[] = [];
  #status: ClientStatus = 'connecting';
  #sendScheduled = false;
  #idleWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];
  #closed = false;
  #finalError: ClientError | undefined;

  constructor(options: KeelClientOptions) {
    super();
    this.identity = options.identity;
    this.#store = options.storage;
    this.#epochSecret = deriveEpochZeroSecret(options.identity.user.rootKey);
    this.#peers.set(options.identity.device.deviceId, options.identity.device.publicKey);
    const Impl = options.WebSocket ?? (globalThis as { WebSocket?: new (url: string) => unknown }).WebSocket;
    if (!Impl) throw new Error('no WebSocket implementation: pass one as options.WebSocket (in Node: the ws package)');
    const factory: WebSocketFactory = (url) => new Impl(url) as WebSocketLike;
    this.#link = new RelayLink(options.url, options.identity, factory, createBackoff(options.backoff), {
      onState: (state) => this.#onLinkState(state),
      onReady: (frame) => this.#onReady(frame),
      onFrame: (frame) => this.#onFrame(frame),
      onError: (error) => {
        if (error.final) {
          this.#finalError = error;
          for (const waiter of this.#idleWaiters.splice(0)) waiter.reject(toError(error));
        }
        this.emit('error', [error]);
      },
    });
    this.#link.start();
  }

  get status(): ClientStatus {
    return this.#status;
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
    if (this.#closed) throw new Error('client is closed');
    const docClass = DocClassSchema.parse(spec.class);
    const docId = this.docId(spec);
    const open = this.#docs.get(docId);
    if (open) return open.doc;
    let opening = this.#opening.get(docId);
    if (!opening) {
      opening = DocSync.load(docId, docClass, spec.name, {
        store: this.#store,
        identity: this.identity,
        key: deriveDocKey(this.#epochSecret, docId, 0),
        epoch: 0,
        peerKey: (device) => this.#peers.get(device),
        onPending: (sync) => {
          this.#dirty.add(sync);
          this.#scheduleSend();
        },
        onProgress: () => this.#checkProgress(),
        onError: (error) => this.emit('error', [error]),
      });
      this.#opening.set(docId, opening);
    }
    const sync = await opening;
    this.#opening.delete(docId);
    if (!this.#docs.has(docId)) {
      this.#docs.set(docId, sync);
      if (sync.hasPending) this.#dirty.add(sync);
      if (this.#link.state === 'ready') this.#startDoc(sync);
      this.#updateStatus();
    }
    return this.#docs.get(docId)!.doc;
  }

  /**
   * Resolves when every local change so far is acknowledged by the relay (waits while offline).
   * Rejects if the relay refuses this device for good; the changes stay in local storage.
   */
  async flush(): Promise<void> {
    await Promise.all([...this.#docs.values()].map((d) => d.settle()));
    this.#scheduleSend();
    if (![...this.#docs.values()].some((d) => d.busy)) return;
    if (this.#finalError) throw toError(this.#finalError);
    await new Promise<void>((resolve, reject) => this.#idleWaiters.push({ resolve, reject }));
  }

  /**
   * Resolves once every open document has caught up with the relay on this connection.
   * Rejects if the relay refuses this device for good (revoked, unknown, bad signature).
   */
  whenSynced(): Promise<void> {
    if (this.#status === 'synced') return Promise.resolve();
    if (this.#finalError) return Promise.reject(toError(this.#finalError));
    return new Promise((resolve, reject) => {
      const onStatus = (status: ClientStatus) => {
        if (status !== 'synced') return;
        cleanup();
        resolve();
      };
      const onError = (error: ClientError) => {
        if (!error.final) return;
        cleanup();
        reject(toError(error));
      };
      const cleanup = () => {
        this.off('status', onStatus);
        this.off('error', onError);
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
    await Promise.all([...this.#docs.values()].map((d) => d.close()));
    this.#docs.clear();
    this.#setStatus('closed');
    for (const waiter of this.#idleWaiters.splice(0)) waiter.reject(new Error('client closed before its changes were acknowledged'));
  }

  #onLinkState(state: LinkState): void {
    if (state === 'offline') for (const d of this.#docs.values()) d.resetSynced();
    this.#updateStatus();
  }

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
    this.#certs = frame.certs;
    this.#verifyPeers();
    const docs = [...this.#docs.values()];
    for (const d of docs) d.resetSynced();
    for (let i = 0; i < docs.length; i += WireLimits.maxDocsPerSubscribe) {
      const page = docs.slice(i, i + WireLimits.maxDocsPerSubscribe);
      this.#link.send({ type: 'sub', docs: page.map((d) => ({ doc: d.docId, after: d.lastSeq as Seq })) });
    }
    // Crisis documents first: their unacknowledged envelopes are resent before anything else.
    for (const d of docs.sort((a, b) => b.lane - a.lane)) this.#resendOutbox(d);
    for (const d of docs) if (d.hasPending) this.#dirty.add(d);
    this.#scheduleSend();
    this.#updateStatus();
  }

  #startDoc(sync: DocSync): void {
    sync.resetSynced();
    this.#link.send({ type: 'sub', docs: [{ doc: sync.docId, after: sync.lastSeq as Seq }] });
    this.#resendOutbox(sync);
    this.#scheduleSend();
  }

  #resendOutbox(sync: DocSync): void {
    const envs = sync.outbox();
    for (let i = 0; i < envs.length; i += WireLimits.maxEnvelopesPerFrame) {
      this.#link.send({ type: 'push', envs: envs.slice(i, i + WireLimits.maxEnvelopesPerFrame) });
    }
  }

  #verifyPeers(): void {
    const verified = verifyCertificateChain(this.#certs, this.identity.user.userId);
    verified.set(this.identity.device.deviceId, this.identity.device.publicKey);
    this.#peers = verified;
  }

  #onFrame(frame: RelayFrame): void {
    switch (frame.type) {
      case 'ack':
        for (const { doc, counter, seq } of frame.acks) void this.#docs.get(doc)?.acknowledge(counter, seq);
        return;
      case 'reject':
        // The envelope stays in the outbox: a refused write is reported, never dropped.
        this.emit('error', [{ code: frame.code, message: frame.message, doc: frame.doc }]);
        return;
      case 'updates': {
        const sync = this.#docs.get(frame.doc);
        if (sync) void sync.receive(frame.items).then(() => this.#checkProgress());
        return;
      }
      case 'synced':
        this.#docs.get(frame.doc)?.markSynced(frame.seq);
        this.#checkProgress();
        return;
      case 'device':
        this.#certs = [...this.#certs.filter((c) => c.device !== frame.cert.device), frame.cert];
        this.#verifyPeers();
        return;
      case 'error':
        if (frame.doc) this.emit('error', [{ code: frame.code, message: frame.message, doc: frame.doc }]);
        return;
      case 'challenge':
      case 'ready':
        return;
    }
  }

  #checkProgress(): void {
    this.#updateStatus();
    if (this.#idleWaiters.length > 0 && ![...this.#docs.values()].some((d) => d.busy)) {
      for (const waiter of this.#idleWaiters.splice(0)) waiter.resolve();
    }
  }

  #scheduleSend(): void {
    if (this.#sendScheduled || this.#closed) return;
    this.#sendScheduled = true;
    queueMicrotask(() => {
      this.#sendScheduled = false;
      void this.#sendPending();
    });
  }

  /** Seals pending local changes, crisis documents first, and pushes them. */
  async #sendPending(): Promise<void> {
    if (this.#link.state !== 'ready') return;
    const dirty = [...this.#dirty].sort((a, b) => b.lane - a.lane);
    this.#dirty.clear();
    for (const sync of dirty) {
      const env = await sync.seal();
      // Sealed envelopes wait in the outbox if the link dropped meanwhile; resent on ready.
      if (env && this.#link.state === 'ready') this.#link.send({ type: 'push', envs: [env] });
    }
    this.#checkProgress();
  }
}

const toError = (e: ClientError): Error => Object.assign(new Error(`${e.code}: ${e.message}`), { code: e.code });

/** Creates a client and starts connecting. */
export const createClient = async (options: KeelClientOptions): Promise<KeelClient> => {
  await cryptoReady();
  return new KeelClient(options);
};
