// A device's local data as a whole, for `signOut({ wipe: true })`. The identity is the app's (it
// chose where to keep it); wiping removes Keel's stores: its own state (outbox, counters, key
// epochs, trust book) and document content. Platform parts: sqlite-local-data.ts (Node),
// browser-local-data.ts (IndexedDB), so neither pulls the other's code into its bundle.
import type { ClientStore } from './client-store.js';

/** What a client owns beyond the store object it was given: how to remove it all. */
export interface LocalData {
  /** Removes every local store of this client, after it closed; resolves once they are gone. */
  wipe(): Promise<void>;
}

/** The default when the app passed its own store: every entry of it is removed; the store stays open (it is the app's). */
export const clearStore = (store: ClientStore): LocalData => ({
  wipe: () => store.removeRange([]),
});
