import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';
import { type ClientStore, joinKey, joinPrefix, prefixEnd, splitKey } from './client-store.js';

/**
 * better-sqlite3 is an optional peer dependency: loaded when a SQLite store is opened, not when
 * `@keel/client/node` is imported, so a Node app that keeps its data elsewhere (or in memory)
 * need not install (and compile) it.
 */
const loadSqlite = (): typeof BetterSqlite3 => {
  try {
    return createRequire(import.meta.url)('better-sqlite3') as typeof BetterSqlite3;
  } catch (error) {
    throw new Error(`the SQLite store needs the better-sqlite3 package (an optional peer dependency of @keel/client): ${error instanceof Error ? error.message : String(error)}`);
  }
};

/**
 * Node store: one SQLite file (WAL, synchronous FULL), keys as U+001F-joined text. A batch is one
 * transaction, so a crash leaves either all of it or none.
 */
export const openSqliteClientStore = (path: string): ClientStore => {
  const Database = loadSqlite();
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(`CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID`);
  const get = db.prepare<[string], { v: Buffer }>(`SELECT v FROM kv WHERE k = ?`);
  const put = db.prepare(`INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v`);
  const del = db.prepare(`DELETE FROM kv WHERE k = ?`);
  // [prefix, prefixEnd(prefix)) holds exactly the keys that start with the prefix.
  const range = db.prepare<[string, string], { k: string; v: Buffer }>(`SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k`);
  const delRange = db.prepare(`DELETE FROM kv WHERE k >= ? AND k < ?`);
  const all = db.prepare<[], { k: string; v: Buffer }>(`SELECT k, v FROM kv ORDER BY k`);
  const deleteAll = db.prepare(`DELETE FROM kv`);
  const bytes = (b: Buffer) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength).slice();
  const batch = db.transaction((ops: Parameters<ClientStore['batch']>[0]) => {
    for (const op of ops) {
      if (op.op === 'save') put.run(joinKey(op.key), op.data);
      else del.run(joinKey(op.key));
    }
  });
  let closed = false;
  return {
    load: async (key) => {
      const row = get.get(joinKey(key));
      return row && bytes(row.v);
    },
    save: async (key, data) => {
      put.run(joinKey(key), data);
    },
    remove: async (key) => {
      del.run(joinKey(key));
    },
    loadRange: async (prefix) => {
      const p = joinPrefix(prefix);
      const rows = p === '' ? all.all() : range.all(p, prefixEnd(p));
      return rows.map((row) => ({ key: splitKey(row.k), data: bytes(row.v) }));
    },
    removeRange: async (prefix) => {
      const p = joinPrefix(prefix);
      if (p === '') deleteAll.run();
      else delRange.run(p, prefixEnd(p));
    },
    batch: async (ops) => {
      batch.immediate(ops);
    },
    close: async () => {
      if (closed) return;
      closed = true;
      db.close();
    },
  };
};
