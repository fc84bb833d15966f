// The client surface the demo uses. `provider()` (contract 2: a y-websocket-shaped handle with
// awareness) lands with the awareness work; until it is merged the journal runs without shared
// cursors and says so, instead of guessing.
import type { createBrowserClient } from '@keel/client/browser';
import type * as Y from 'yjs';
import type { Awareness } from 'y-protocols/awareness';

export interface KeelProvider {
  readonly doc: Y.Doc;
  readonly awareness: Awareness;
  readonly synced: boolean;
  on(event: 'sync', listener: (isSynced: boolean) => void): void;
  on(event: 'status', listener: (event: { status: 'connecting' | 'connected' | 'disconnected' }) => void): void;
  destroy(): void;
}

interface ContractMembers {
  provider(spec: { class: string; name: string }): Promise<KeelProvider>;
}

/** The browser client, with the contract member that may not be in this build yet. */
export type DemoClient = Awaited<ReturnType<typeof createBrowserClient>> & Partial<ContractMembers>;
