// The provider handle (contract 2) a tab's app gets: y-websocket's shape around this tab's
// document and awareness, whichever tab leads.
import type { Awareness } from 'y-protocols/awareness';
import type * as Y from 'yjs';
import type { ClientStatus } from '../client-api.js';
import { type ProviderEvents, ProviderHandle, providerStatus } from '../provider.js';

/** Events in y-websocket's shapes, so editor bindings use the handle unchanged (the Node client's). */
export type TabProviderEvents = ProviderEvents;

/**
 * A handle on one document of a tab: `doc`, `awareness`, `synced`, events `sync`, `synced` and
 * `status`, `destroy()`. In a tab `synced` follows the device's status (the leader tab's link).
 * Handles of one document share the doc and the awareness; the tab counts them.
 */
export class TabProvider extends ProviderHandle {
  readonly #onDestroy: (provider: TabProvider) => Promise<void>;

  constructor(doc: Y.Doc, awareness: Awareness, status: ClientStatus, onDestroy: (provider: TabProvider) => Promise<void>) {
    super(doc, awareness, providerStatus(status), status === 'synced');
    this.#onDestroy = onDestroy;
  }

  /** The device's status changed: emits what that changes for this handle. */
  refresh(status: ClientStatus): void {
    this.update(providerStatus(status), status === 'synced');
  }

  /** The last handle of a document ends this tab's awareness of it. */
  protected async release(): Promise<void> {
    await this.#onDestroy(this);
  }
}
