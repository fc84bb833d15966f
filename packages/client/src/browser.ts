// @keel/client/browser — a client wired to IndexedDB (Keel's own state and the documents'
// content), shared by every tab of the app: one tab leads and holds the relay link, the others follow.
import { type KeelClientOptions, createClient } from './client.js';
import type { KeelClientApi } from './client-api.js';
import { browserLocalData, requestPersistentStorage } from './storage/browser-local-data.js';
import { openIndexedDbStore } from './storage/indexeddb-store.js';
import { createYIndexedDbState } from './storage/y-indexeddb-state.js';
import { type LeaderLock, createMemoryLocks, createWebLocks } from './tabs/leader-lock.js';
import type { BroadcastChannelLike } from './tabs/tab-channel.js';
import { type LeaderClient, TabClient, type TabClientEvents } from './tabs/tab-client.js';
import type { TabProvider, TabProviderEvents } from './tabs/tab-provider.js';

export { openIndexedDbStore, createYIndexedDbState, createMemoryLocks, createWebLocks, TabClient };
export type { LeaderLock, BroadcastChannelLike, TabClientEvents, TabProvider, TabProviderEvents };

export type BrowserClientOptions = Omit<KeelClientOptions, 'storage' | 'documentState'> & {
  /**
   * Names this device's databases: `keel-${name}` for pending updates, outbox and sync state,
   * `keel-${name}-doc-<opaque id>` for each document's content. One name per identity. Also
   * names the tabs' lock (`keel-${name}-leader`) and channel (`keel-${name}-tabs`).
   */
  readonly name: string;
  /** Tab coordination; defaults to Web Locks and BroadcastChannel. Tests pass their own. */
  readonly tabs?: {
    readonly lock?: LeaderLock;
    readonly channel?: BroadcastChannelLike;
    /** How long creation waits to learn whether this tab leads. Default 2 s. */
    readonly settleMs?: number;
  };
};

/** What `createBrowserClient` returns: the client API, plus whether this tab leads. */
export interface BrowserClient extends KeelClientApi {
  readonly isLeader: boolean;
  /** The relay id of a document (opaque), as KeelClient's. */
  docId: TabClient['docId'];
  /** A y-websocket-shaped handle on a document (contract 2), in whichever tab. */
  provider: TabClient['provider'];
  on<NAME extends keyof TabClientEvents & string>(name: NAME, f: TabClientEvents[NAME]): TabClientEvents[NAME];
  once<NAME extends keyof TabClientEvents & string>(name: NAME, f: TabClientEvents[NAME]): void;
  off<NAME extends keyof TabClientEvents & string>(name: NAME, f: TabClientEvents[NAME]): void;
}

/** Locks of this realm, for runtimes without Web Locks: only tabs in one realm coordinate then. */
let realmLocks: LeaderLock | undefined;

const defaultLock = (): LeaderLock => {
  const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
  if (locks) return createWebLocks(locks);
  return (realmLocks ??= createMemoryLocks());
};

/**
 * The real client of the tab that leads: Keel's IndexedDB store, y-indexeddb for the documents'
 * content, and the local data a wipe removes. Its providers' awareness is what this device
 * shares with its other devices.
 */
export const createBrowserLeader = async (
  name: string,
  options: Omit<KeelClientOptions, 'storage' | 'documentState' | 'localData'>,
): Promise<LeaderClient> => {
  const storage = await openIndexedDbStore(`keel-${name}`);
  try {
    const client = await createClient({
      ...options,
      storage,
      documentState: createYIndexedDbState({ dbPrefix: `keel-${name}-doc-` }),
      localData: browserLocalData(name, { store: storage }),
    });
    return {
      client,
      awareness: (spec) => client.provider(spec),
      signOut: async (signOutOptions) => {
        await client.signOut(signOutOptions);
        // A wipe closed the store before deleting it.
        if (!signOutOptions.wipe) await storage.close();
      },
      close: async () => {
        // close() resolves once every document's writes have settled.
        await client.close();
        await storage.close();
      },
    };
  } catch (error) {
    await storage.close();
    throw error;
  }
};

/**
 * A client persisting everything in IndexedDB, so a reload while offline loses nothing; the
 * store belongs to the client and is closed with it. Any number of tabs may call this with the
 * same `name`: exactly one of them (the leader) connects to the relay, the others forward their
 * changes and calls to it, and another tab takes over when the leader closes or crashes.
 */
export const createBrowserClient = async (options: BrowserClientOptions): Promise<BrowserClient> => {
  const { name, tabs, ...rest } = options;
  // Local data (storage/browser-local-data.ts): every tab asks the browser to keep it (not waiting for a prompt).
  const storagePersisted = requestPersistentStorage();
  const createLeader = () => createBrowserLeader(name, { ...rest, storagePersisted });
  return TabClient.create({
    identity: options.identity,
    name,
    lock: tabs?.lock ?? defaultLock(),
    channel: tabs?.channel ?? new BroadcastChannel(`keel-${name}-tabs`),
    createLeader,
    storagePersisted,
    ...(tabs?.settleMs !== undefined ? { settleMs: tabs.settleMs } : {}),
  });
};
