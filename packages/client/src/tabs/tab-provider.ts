// The provider handle (contract 2) a tab's app gets: y-websocket's shape around this tab's
// document and awareness, whichever tab leads.
import { ObservableV2 } from 'lib0/observable';
import type { Awareness } from 'y-protocols/awareness';
import type * as Y from 'yjs';
import type { ClientStatus } from '../client-api.js';

import { type DocProvider, type ProviderEvents, type ProviderStatus, providerStatus } from '../provider.js';

/** Events in y-websocket's shapes, so editor bindings use the handle unchanged (the Node client's). */
export type TabProviderEvents = ProviderEvents;


/**
 * A handle on one document of a tab: `doc`, `awareness`, `synced`, events `sync`, `synced` and
 * `status`, `destroy()`. In a tab `synced` follows the device's status (the leader tab's link).
 * Handles of one document share the doc and the awareness; the tab counts them.
 */
export class TabProvider extends ObservableV2<TabProviderEvents> implements DocProvider {
  readonly doc: Y.Doc;
  readonly awareness: Awareness;
  #status: ProviderStatus;
  #synced: boolean;
  #destroyed = false;
  readonly #onDestroy: (provider: TabProvider) => Promise<void>;

  constructor(doc: Y.Doc, awareness: Awareness, status: ClientStatus, onDestroy: (provider: TabProvider) => Promise<void>) {
    super();
    this.doc = doc;
    this.awareness = awareness;
    this.#status = providerStatus(status);
    this.#synced = status === 'synced';
    this.#onDestroy = onDestroy;
  }

  get synced(): boolean {
    return this.#synced;
  }

  /** y-websocket's `wsconnected`. */
  get wsconnected(): boolean {
    return this.#status === 'connected';
  }

  /** The device's status changed: emits what that changes for this handle. */
  refresh(status: ClientStatus): void {
    if (this.#destroyed) return;
    const next = providerStatus(status);
    if (next !== this.#status) {
      this.#status = next;
      this.emit('status', [{ status: next }]);
    }
    const synced = status === 'synced';
    if (synced !== this.#synced) {
      this.#synced = synced;
      this.emit('sync', [synced]);
      this.emit('synced', [synced]);
    }
  }

  /** Lets go of the document; the last handle of a document ends this tab's awareness of it. */
  override async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    super.destroy();
    await this.#onDestroy(this);
  }
}
