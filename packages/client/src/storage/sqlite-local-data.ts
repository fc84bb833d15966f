import { rm } from 'node:fs/promises';
import type { ClientStore } from './client-store.js';
import type { LocalData } from './local-data.js';

/**
 * A SQLite store the client opened itself (from a path): closed, then its file removed together
 * with SQLite's write-ahead log, shared-memory and rollback journal files.
 */
export const sqliteFiles = (store: ClientStore, path: string): LocalData => ({
  wipe: async () => {
    await store.close();
    await Promise.all([path, `${path}-wal`, `${path}-shm`, `${path}-journal`].map((file) => rm(file, { force: true })));
  },
});
