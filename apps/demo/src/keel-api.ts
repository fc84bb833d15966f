// The client surface the demo uses, as the step-7 contracts define it (docs/architecture.md):
// `provider()` (contract 2) and `stats()` (contract 4) land with the awareness and packaging
// work; until then the demo says "not available in this build" instead of guessing.
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

export interface ClientStats {
  readonly outboxDepth: number;
  readonly lastLatencyMs: Readonly<Record<string, number | undefined>>;
}

interface ContractMembers {
  provider(spec: { class: string; name: string }): Promise<KeelProvider>;
  stats(): ClientStats;
  signOut(options: { wipe: boolean }): Promise<void>;
}

/** The browser client, with the contract members that may not be in this build yet. */
export type DemoClient = Awaited<ReturnType<typeof createBrowserClient>> & Partial<ContractMembers>;
