import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createMemoryStore } from '../src/storage/memory-store.js';
import { openSqliteClientStore } from '../src/storage/sqlite-store.js';
import { runClientStoreConformance } from './store-conformance.js';

runClientStoreConformance('memory', async () => ({ store: createMemoryStore(), cleanup: async () => {} }), { volatile: true });

runClientStoreConformance('sqlite (file, WAL)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'keel-client-store-'));
  const path = join(dir, 'client.db');
  return {
    store: openSqliteClientStore(path),
    reopen: async () => openSqliteClientStore(path),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
});
