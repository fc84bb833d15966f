import { type ClientStore, type StorageChunk, joinKey, joinPrefix, prefixEnd, splitKey } from './client-store.js';

/** Schema version of the database; raising it means writing an upgrade in `onupgradeneeded`. */
const DB_VERSION = 1;
/** The one object store: out-of-line keys (U+001F-joined strings), Uint8Array values. */
const KV = 'kv';

export interface IndexedDbStoreOptions {
  /** IndexedDB implementation; defaults to the global `indexedDB` (browsers). Tests pass fake-indexeddb's. */
  readonly indexedDB?: IDBFactory;
  /** Key ranges of the same implementation as `indexedDB`; defaults to the global `IDBKeyRange`. */
  readonly IDBKeyRange?: typeof IDBKeyRange;
}

/**
 * Browser store: one IndexedDB database holding one object store. A batch is one readwrite
 * transaction with strict durability, resolved only when it commits, so a crash or a closed tab
 * leaves all of it or none. Keys compare as UTF-16 code units, the order of the memory store.
 */
export const openIndexedDbStore = async (name: string, options: IndexedDbStoreOptions = {}): Promise<ClientStore> => {
  const globals = globalThis as { indexedDB?: IDBFactory; IDBKeyRange?: typeof IDBKeyRange };
  const factory = options.indexedDB ?? globals.indexedDB;
  const KeyRange = options.IDBKeyRange ?? globals.IDBKeyRange;
  if (!factory || !KeyRange) throw new Error('no IndexedDB here: pass options.indexedDB and options.IDBKeyRange (in Node: fake-indexeddb)');

  let db: IDBDatabase | undefined = await openDatabase(factory, name);
  /** Why the store no longer works, once it does not. */
  let lost: string | undefined;
  const release = (reason: string) => {
    if (!db) return;
    // Transactions already created still run to completion; only new ones are refused.
    db.close();
    db = undefined;
    lost = reason;
  };
  // Another tab upgrades or deletes the database: step aside instead of blocking it forever.
  db.onversionchange = () => release('another connection upgraded or deleted the database');
  // The browser closed the connection itself (storage cleared by the user, disk failure).
  db.onclose = () => release('the browser closed the database connection');

  const database = (): IDBDatabase => {
    if (!db) throw new Error(`IndexedDB store "${name}" is closed: ${lost ?? 'closed'}`);
    return db;
  };

  /**
   * Runs `issue` in one transaction and resolves with what its returned reader gives once the
   * transaction has committed; rejects, with nothing applied, if it aborts. Every request is
   * issued synchronously, while the transaction is active.
   */
  const transact = <T>(mode: IDBTransactionMode, issue: (store: IDBObjectStore) => () => T): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const tx = mode === 'readwrite' ? database().transaction(KV, mode, { durability: 'strict' }) : database().transaction(KV, mode);
      let read: (() => T) | undefined;
      let failure: unknown;
      tx.oncomplete = () => {
        try {
          resolve(read!());
        } catch (error) {
          reject(error);
        }
      };
      tx.onabort = () => reject(failure ?? tx.error ?? new Error(`IndexedDB transaction on "${name}" aborted`));
      try {
        read = issue(tx.objectStore(KV));
      } catch (error) {
        failure = error;
        try {
          tx.abort();
        } catch {
          // Already aborted by the failure itself; onabort reports it.
        }
      }
    });

  const range = (prefix: readonly string[]): IDBKeyRange | undefined => {
    const p = joinPrefix(prefix);
    // [prefix, prefixEnd(prefix)) holds exactly the keys that start with the prefix.
    return p === '' ? undefined : KeyRange.bound(p, prefixEnd(p), false, true);
  };

  return {
    load: async (key) => {
      const k = joinKey(key);
      return transact('readonly', (store) => {
        const request = store.get(k);
        return () => (request.result === undefined ? undefined : storedBytes(request.result));
      });
    },
    save: async (key, data) => {
      const k = joinKey(key);
      const value = copyBytes(data);
      await transact('readwrite', (store) => {
        store.put(value, k);
        return () => undefined;
      });
    },
    remove: async (key) => {
      const k = joinKey(key);
      await transact('readwrite', (store) => {
        store.delete(k);
        return () => undefined;
      });
    },
    loadRange: async (prefix) => {
      const query = range(prefix);
      // One read-only transaction sees one snapshot, so keys and values line up.
      return transact('readonly', (store) => {
        const keys = store.getAllKeys(query);
        const values = store.getAll(query);
        return () =>
          keys.result.map((k, i): StorageChunk => {
            if (typeof k !== 'string') throw new Error(`IndexedDB store "${name}" holds a key that is not a string`);
            return { key: splitKey(k), data: storedBytes(values.result[i]) };
          });
      });
    },
    removeRange: async (prefix) => {
      const query = range(prefix);
      await transact('readwrite', (store) => {
        if (query) store.delete(query);
        else store.clear();
        return () => undefined;
      });
    },
    batch: async (ops) => {
      // Every key is checked before the transaction opens: a bad op refuses the whole batch.
      const prepared = ops.map((op) => ({ key: joinKey(op.key), value: op.op === 'save' ? copyBytes(op.data) : undefined }));
      if (prepared.length === 0) {
        database();
        return;
      }
      await transact('readwrite', (store) => {
        for (const { key, value } of prepared) {
          if (value !== undefined) store.put(value, key);
          else store.delete(key);
        }
        return () => undefined;
      });
    },
    close: async () => {
      release('closed by its owner');
    },
  };
};

/**
 * Opens (creating on first use) the database. `blocked` means a connection elsewhere holds an
 * older version open and ignores `versionchange`: fail now rather than hang the app's start,
 * and close the connection should it still arrive later.
 */
const openDatabase = (factory: IDBFactory, name: string): Promise<IDBDatabase> =>
  new Promise((resolve, reject) => {
    let settled = false;
    const request = factory.open(name, DB_VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      if (!db.objectStoreNames.contains(KV)) db.createObjectStore(KV);
    };
    request.onsuccess = () => {
      if (settled) {
        request.result.close();
        return;
      }
      settled = true;
      resolve(request.result);
    };
    request.onerror = () => {
      if (settled) return;
      settled = true;
      reject(request.error ?? new Error(`cannot open IndexedDB database "${name}"`));
    };
    request.onblocked = () => {
      if (settled) return;
      settled = true;
      reject(new Error(`IndexedDB database "${name}" is held open at an older version by another tab`));
    };
  });

/**
 * A private copy of exactly the view's bytes: structured clone would otherwise store the whole
 * underlying buffer of a subarray (a Yjs update is often a view into a larger one).
 */
const copyBytes = (data: Uint8Array): Uint8Array => new Uint8Array(data);

/** Values come back as fresh structured clones, so they are the caller's own copy already. */
const storedBytes = (value: unknown): Uint8Array => {
  if (value instanceof Uint8Array) return value;
  throw new Error('IndexedDB store holds a value that is not bytes');
};
