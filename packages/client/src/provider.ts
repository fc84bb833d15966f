import type { DocId } from '@keel/engine';
import { ObservableV2 } from 'lib0/observable';
import type { Awareness } from 'y-protocols/awareness';
import type * as Y from 'yjs';

/** A provider's connection status, in y-websocket's words. */
export type ProviderStatus = 'connecting' | 'connected' | 'disconnected';

/** Events of a provider, shaped like y-websocket's so editor bindings and apps use it unchanged. */
export type ProviderEvents = {
  /** Caught up with the relay (true), or no longer (false: the link dropped). */
  sync: (isSynced: boolean) => void;
  /** Same moment as `sync`, as y-websocket also emits it. */
  synced: (isSynced: boolean) => void;
  status: (event: { readonly status: ProviderStatus }) => void;
};

/** What a provider needs from the client that hosts it; the client passes these, nothing more. */
/**
 * The provider handle every tab and the Node client give (contract of `client.provider()`):
 * y-websocket's shape, so editor bindings (y-prosemirror, yCollab, TipTap) use it unchanged.
 */
export interface DocProvider {
  readonly doc: Y.Doc;
  readonly awareness: Awareness;
  /** Caught up with the relay. */
  readonly synced: boolean;
  /** y-websocket's `wsconnected`: the device's link is up. */
  readonly wsconnected: boolean;
  on<NAME extends keyof ProviderEvents & string>(name: NAME, f: ProviderEvents[NAME]): ProviderEvents[NAME];
  once<NAME extends keyof ProviderEvents & string>(name: NAME, f: ProviderEvents[NAME]): void;
  off<NAME extends keyof ProviderEvents & string>(name: NAME, f: ProviderEvents[NAME]): void;
  /** Releases this handle; the last one closes the document (it can be opened again). */
  destroy(): Promise<void>;
}

export interface ProviderHost {
  /** The client's status: 'connecting' | 'connected' | 'offline' | 'synced' | 'closed'. */
  status(): string;
  /** Whether the document caught up with the relay on the current connection. */
  caughtUp(docId: DocId): boolean;
  /** No handle holds the document any more: the client closes it (durably, the next open gets it back). */
  release(docId: DocId): Promise<void>;
}

/** The client's status as y-websocket names a provider's. */
export const providerStatus = (clientStatus: string): ProviderStatus =>
  clientStatus === 'connected' || clientStatus === 'synced' ? 'connected' : clientStatus === 'connecting' ? 'connecting' : 'disconnected';

/**
 * What every provider handle shares: the document, its awareness, y-websocket's `synced` and
 * `wsconnected`, and the events emitted when they change. Subclasses say where the state comes
 * from and what releasing a handle does.
 */
export abstract class ProviderHandle extends ObservableV2<ProviderEvents> implements DocProvider {
  readonly doc: Y.Doc;
  readonly awareness: Awareness;
  #status: ProviderStatus;
  #synced: boolean;
  #destroyed = false;

  constructor(doc: Y.Doc, awareness: Awareness, status: ProviderStatus, synced: boolean) {
    super();
    this.doc = doc;
    this.awareness = awareness;
    this.#status = status;
    this.#synced = synced;
  }

  /** Caught up with the relay (y-websocket's `synced`). */
  get synced(): boolean {
    return this.#synced;
  }

  /** y-websocket's `wsconnected`. */
  get wsconnected(): boolean {
    return this.#status === 'connected';
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Emits `status` for the current status (a new handle reports itself once). */
  protected announce(): void {
    if (!this.#destroyed) this.emit('status', [{ status: this.#status }]);
  }

  /** Takes the new state and emits what changed. */
  protected update(status: ProviderStatus, synced: boolean): void {
    if (this.#destroyed) return;
    if (status !== this.#status) {
      this.#status = status;
      this.emit('status', [{ status }]);
    }
    if (synced !== this.#synced) {
      this.#synced = synced;
      this.emit('sync', [synced]);
      this.emit('synced', [synced]);
    }
  }

  /** Lets go of this handle; what that releases is the subclass's. Resolves once done. */
  override async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    super.destroy();
    await this.release();
  }

  protected abstract release(): Promise<void>;
}

/**
 * A y-websocket-shaped handle on one Keel document of the client (Node, or the tab that leads).
 * Handles are reference counted per document: every `client.provider(spec)` returns a new handle
 * on the same live doc and awareness, and the document closes when its last handle is destroyed
 * (unless the app also opened it with `client.open`, which holds it until the client closes).
 */
export class KeelProvider extends ProviderHandle {
  readonly docId: DocId;
  readonly #registry: ProviderRegistry;

  constructor(docId: DocId, doc: Y.Doc, awareness: Awareness, registry: ProviderRegistry, host: ProviderHost) {
    super(doc, awareness, providerStatus(host.status()), false);
    this.docId = docId;
    this.#registry = registry;
    // y-websocket's provider is built synchronously and reports its status and first sync a
    // moment later; a handle on a document already caught up does the same on the next turn, so
    // listeners attached right after `await client.provider()` hear it.
    setTimeout(() => {
      this.announce();
      this.refresh(host);
    }, 0);
  }

  /** Re-reads the host's state and emits what changed. */
  refresh(host: ProviderHost): void {
    if (this.destroyed) return;
    this.update(providerStatus(host.status()), host.caughtUp(this.docId));
  }

  /**
   * The last handle closes the document: its sync stops, its local changes are already stored
   * (and sent when it is opened again), it leaves the client's memory and its Y.Doc is destroyed.
   */
  protected async release(): Promise<void> {
    await this.#registry.drop(this);
  }
}

/** The client's live provider handles, by document; tells each what changed. */
export class ProviderRegistry {
  readonly #host: ProviderHost;
  readonly #handles = new Map<DocId, Set<KeelProvider>>();
  /** Documents the app opened with `open()`: held until the client closes, whatever handles do. */
  readonly #held = new Set<DocId>();

  constructor(host: ProviderHost) {
    this.#host = host;
  }

  /** A new handle on an open document. */
  create(docId: DocId, doc: Y.Doc, awareness: Awareness): KeelProvider {
    const provider = new KeelProvider(docId, doc, awareness, this, this.#host);
    const set = this.#handles.get(docId) ?? new Set<KeelProvider>();
    set.add(provider);
    this.#handles.set(docId, set);
    return provider;
  }

  /** The document was opened with `open()`: it stays open until the client closes. */
  hold(docId: DocId): void {
    this.#held.add(docId);
  }

  async drop(provider: KeelProvider): Promise<void> {
    const set = this.#handles.get(provider.docId);
    if (!set?.delete(provider)) return;
    if (set.size > 0) return;
    this.#handles.delete(provider.docId);
    if (!this.#held.has(provider.docId)) await this.#host.release(provider.docId);
  }

  /** Status or progress changed somewhere: every handle checks its own. */
  refresh(): void {
    for (const set of this.#handles.values()) for (const provider of set) provider.refresh(this.#host);
  }

  /** The client closed: every handle reports it, and none closes anything any more. */
  clear(): void {
    this.refresh();
    this.#handles.clear();
  }
}
