import { type ClientStore, type StorageChunk, joinKey, joinPrefix, splitKey } from './client-store.js';

/** Volatile store for tests and ephemeral sessions. Copies bytes in and out. */
export const createMemoryStore = (): ClientStore => {
  const data = new Map<string, Uint8Array>();
  const range = (prefix: readonly string[]) => {
    const p = joinPrefix(prefix);
    return [...data.keys()].filter((k) => k.startsWith(p)).sort();
  };
  return {
    load: async (key) => {
      const value = data.get(joinKey(key));
      return value && value.slice();
    },
    save: async (key, value) => {
      data.set(joinKey(key), value.slice());
    },
    remove: async (key) => {
      data.delete(joinKey(key));
    },
    loadRange: async (prefix) => range(prefix).map((k): StorageChunk => ({ key: splitKey(k), data: data.get(k)!.slice() })),
    removeRange: async (prefix) => {
      for (const k of range(prefix)) data.delete(k);
    },
    batch: async (ops) => {
      // Validate every key first so a bad op cannot leave the batch half-applied.
      const joined = ops.map((op) => joinKey(op.key));
      ops.forEach((op, i) => {
        if (op.op === 'save') data.set(joined[i]!, op.data.slice());
        else data.delete(joined[i]!);
      });
    },
    close: async () => {},
  };
};
