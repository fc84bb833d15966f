import type { ClientStore } from './client-store.js';
import { openIndexedDbStore } from './indexeddb-store.js';
import type { LocalData } from './local-data.js';

/** The IndexedDB databases of one client name (see `createBrowserClient`). */
export const browserDatabaseNames = (name: string) => ({
  /** Keel's own state: outbox, counters, key epochs, trust book, tier. */
  state: `keel-${name}`,
  /** Start of each document's content database (y-indexeddb); the opaque document id follows. */
  docPrefix: `keel-${name}-doc-`,
});

/** Deletes one database; resolves once it is gone. Open connections elsewhere are asked to close (versionchange). */
const deleteDatabase = (factory: IDBFactory, name: string): Promise<void> =>
  new Promise((resolve, reject) => {
    const request = factory.deleteDatabase(name);
    request.onsuccess = () => resolve();
    request.onerror = () => reject(request.error ?? new Error(`cannot delete IndexedDB database ${name}`));
    // 'blocked': another tab still holds it open; the delete completes when it lets go (our
    // stores close on versionchange), so keep waiting for success.
  });

/** Document ids this client kept state for, read from its own store (each document has a meta entry). */
const docIdsIn = async (store: ClientStore): Promise<string[]> => {
  const ids = new Set<string>();
  for (const { key } of await store.loadRange(['doc'])) if (key[1] !== undefined) ids.add(key[1]);
  return [...ids];
};

/**
 * The documents the state database records. The client's store may be closed already (it closes
 * with the client), or this tab has none (a follower tab): then a connection of our own reads them.
 */
const recordedDocIds = async (stateDb: string, options: BrowserLocalDataOptions): Promise<string[]> => {
  try {
    if (!options.store) throw new Error('no store');
    return await docIdsIn(options.store);
  } catch {
    const fresh = await openIndexedDbStore(stateDb, options);
    try {
      return await docIdsIn(fresh);
    } finally {
      await fresh.close();
    }
  }
};

export interface BrowserLocalDataOptions {
  /** The client's open store of `keel-<name>`, closed before the databases are deleted; absent in a tab without one. */
  readonly store?: ClientStore;
  /** IndexedDB implementation; defaults to the global `indexedDB`. */
  readonly indexedDB?: IDBFactory;
  /** Key ranges of the same implementation; defaults to the global `IDBKeyRange`. */
  readonly IDBKeyRange?: typeof IDBKeyRange;
}

/**
 * Everything a browser client keeps: its state database `keel-<name>` and one content database
 * per document, `keel-<name>-doc-<id>`. The documents are found with `indexedDB.databases()`
 * where the browser has it, and from the state database's own records of its documents as well
 * (older browsers, or a document whose content database outlived its record).
 */
export const browserLocalData = (name: string, options: BrowserLocalDataOptions = {}): LocalData => ({
  wipe: async () => {
    const factory = options.indexedDB ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    if (!factory) throw new Error('no IndexedDB here: nothing to wipe with');
    const names = browserDatabaseNames(name);
    const targets = new Set<string>([names.state]);
    for (const id of await recordedDocIds(names.state, { ...options, indexedDB: factory })) targets.add(names.docPrefix + id);
    if (typeof factory.databases === 'function') {
      for (const db of await factory.databases()) if (db.name?.startsWith(names.docPrefix)) targets.add(db.name);
    }
    await options.store?.close();
    await Promise.all([...targets].map((db) => deleteDatabase(factory, db)));
  },
});

/**
 * Asks the browser to keep this origin's data under storage pressure (`navigator.storage.persist()`),
 * so a safety plan written offline is not evicted. Resolves to the browser's answer (Firefox may
 * first ask the person: do not wait on it), or undefined where the API does not exist (Node,
 * older browsers) or fails.
 */
export const requestPersistentStorage = async (): Promise<boolean | undefined> => {
  const storage = (globalThis as { navigator?: { storage?: { persist?: () => Promise<boolean> } } }).navigator?.storage;
  if (typeof storage?.persist !== 'function') return undefined;
  try {
    return await storage.persist();
  } catch {
    return undefined;
  }
};
