// @keel/client/browser — a client wired to IndexedDB: Keel's own state and the documents' content.
import { type KeelClient, type KeelClientOptions, createClient } from './client.js';
import { browserLocalData, requestPersistentStorage } from './storage/browser-local-data.js';
import { openIndexedDbStore } from './storage/indexeddb-store.js';
import { createYIndexedDbState } from './storage/y-indexeddb-state.js';

export { openIndexedDbStore, createYIndexedDbState };

export type BrowserClientOptions = Omit<KeelClientOptions, 'storage' | 'documentState'> & {
  /**
   * Names this device's databases: `keel-${name}` for pending updates, outbox and sync state,
   * `keel-${name}-doc-<opaque id>` for each document's content. One name per identity.
   */
  readonly name: string;
};

/**
 * A client persisting everything in IndexedDB, so a reload while offline loses nothing. The
 * store belongs to the client and is closed with it.
 */
export const createBrowserClient = async (options: BrowserClientOptions): Promise<KeelClient> => {
  const { name, ...rest } = options;
  const storage = await openIndexedDbStore(`keel-${name}`);
  let client: KeelClient;
  try {
    // Local data (storage/browser-local-data.ts): ask the browser to keep it (not waiting for a prompt); signOut({ wipe }) removes all of it.
    const storagePersisted = requestPersistentStorage();
    client = await createClient({ ...rest, storage, documentState: createYIndexedDbState({ dbPrefix: `keel-${name}-doc-` }), localData: browserLocalData(name, { store: storage }), storagePersisted });
  } catch (error) {
    await storage.close();
    throw error;
  }
  // 'closed' is emitted once every document's writes have settled.
  client.on('status', (status) => {
    if (status === 'closed') void storage.close();
  });
  return client;
};
