import { IDBFactory, IDBKeyRange, IDBObjectStore, forceCloseDatabase } from 'fake-indexeddb';
import { afterEach, describe, expect, it } from 'vitest';
import type { ClientStore, StorageOp } from '../src/storage/client-store.js';
import { openIndexedDbStore } from '../src/storage/indexeddb-store.js';
import { runClientStoreConformance } from './store-conformance.js';

runClientStoreConformance('indexeddb (fake-indexeddb)', async () => {
  // A fresh factory is a fresh, empty IndexedDB "origin".
  const indexedDB = new IDBFactory();
  const open = () => openIndexedDbStore('keel-conformance', { indexedDB, IDBKeyRange });
  return { store: await open(), reopen: open, cleanup: async () => {} };
});

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const hex = (b: Uint8Array | undefined): string | undefined => (b === undefined ? undefined : Buffer.from(b).toString('hex'));
const dump = async (store: ClientStore) => (await store.loadRange([])).map((c) => [c.key.join('/'), hex(c.data)]);

describe('IndexedDB store', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  const openStore = async (indexedDB = new IDBFactory(), name = 'keel-test') => {
    const store = await openIndexedDbStore(name, { indexedDB, IDBKeyRange });
    cleanups.push(() => store.close());
    return store;
  };
  /** Makes IDBObjectStore#put misbehave on its `nth` call (1-based) until the cleanup restores it. */
  const sabotagePut = (nth: number, how: 'throw' | 'abort-after-success') => {
    const original = IDBObjectStore.prototype.put;
    let calls = 0;
    IDBObjectStore.prototype.put = function (this: IDBObjectStore, ...args: Parameters<IDBObjectStore['put']>) {
      calls++;
      if (calls === nth && how === 'throw') throw new DOMException('simulated quota failure', 'QuotaExceededError');
      const request = original.apply(this, args);
      // The write itself succeeded; the transaction dies afterwards, before it commits.
      if (calls === nth && how === 'abort-after-success') request.addEventListener('success', () => request.transaction!.abort());
      return request;
    };
    const restore = () => {
      IDBObjectStore.prototype.put = original;
    };
    cleanups.push(restore);
    return { calls: () => calls, restore };
  };

  const seed = async (store: ClientStore) => {
    await store.save(['doc', 'd1', 'meta'], text('meta-v1'));
    await store.save(['outbox', 'd1', '0000000000000001'], text('env-1'));
    await store.save(['pending', 'd1', '0000000000000001'], text('upd-1'));
  };
  // A seal: outbox entry in, pending out, meta updated. All of it or none of it.
  const seal: StorageOp[] = [
    { op: 'save', key: ['outbox', 'd1', '0000000000000002'], data: text('env-2') },
    { op: 'remove', key: ['pending', 'd1', '0000000000000001'] },
    { op: 'save', key: ['doc', 'd1', 'meta'], data: text('meta-v2') },
    { op: 'save', key: ['doc', 'd1', 'state'], data: text('state') },
  ];

  it('applies nothing of a batch whose third write fails inside the transaction', async () => {
    const store = await openStore();
    await seed(store);
    const before = await dump(store);
    // Puts of the batch: outbox (1), meta (2), state (3).
    const put = sabotagePut(3, 'throw');
    await expect(store.batch(seal)).rejects.toThrow(/simulated quota failure/);
    expect(put.calls()).toBe(3);
    put.restore();
    expect(await dump(store)).toEqual(before);
    // The store is still usable and the same batch goes through.
    await store.batch(seal);
    expect(await dump(store)).toEqual([
      ['doc/d1/meta', hex(text('meta-v2'))],
      ['doc/d1/state', hex(text('state'))],
      ['outbox/d1/0000000000000001', hex(text('env-1'))],
      ['outbox/d1/0000000000000002', hex(text('env-2'))],
    ]);
  });

  it('applies nothing of a batch whose transaction aborts after its writes succeeded', async () => {
    const store = await openStore();
    await seed(store);
    const before = await dump(store);
    const put = sabotagePut(2, 'abort-after-success');
    await expect(store.batch(seal)).rejects.toThrow();
    expect(put.calls()).toBe(3);
    put.restore();
    expect(await dump(store)).toEqual(before);
  });

  it('refuses a batch with an invalid key before it opens a transaction', async () => {
    const store = await openStore();
    await seed(store);
    const before = await dump(store);
    const put = sabotagePut(Number.MAX_SAFE_INTEGER, 'throw');
    await expect(store.batch([...seal.slice(0, 2), { op: 'save', key: ['bad\u001fkey'], data: text('x') }, ...seal.slice(2)])).rejects.toThrow(/U\+001F/);
    expect(put.calls(), 'no write was even attempted').toBe(0);
    expect(await dump(store)).toEqual(before);
  });

  it('stores exactly the bytes of a view, not its whole underlying buffer', async () => {
    const store = await openStore();
    const big = new Uint8Array(1 << 16).fill(7);
    big.set([1, 2, 3], 100);
    await store.save(['view'], big.subarray(100, 103));
    const loaded = await store.load(['view']);
    expect(loaded?.byteLength).toBe(3);
    expect(loaded?.buffer.byteLength).toBe(3);
    expect(hex(loaded)).toBe('010203');
  });

  it('keeps separate databases apart and survives a reopen on the same factory', async () => {
    const indexedDB = new IDBFactory();
    const a = await openStore(indexedDB, 'keel-a');
    const b = await openStore(indexedDB, 'keel-b');
    await a.save(['k'], text('a'));
    await b.save(['k'], text('b'));
    await a.close();
    const again = await openStore(indexedDB, 'keel-a');
    expect(hex(await again.load(['k']))).toBe(hex(text('a')));
    expect(hex(await b.load(['k']))).toBe(hex(text('b')));
  });

  it('refuses work after close, and steps aside when another tab deletes the database', async () => {
    const indexedDB = new IDBFactory();
    const store = await openStore(indexedDB);
    await store.save(['k'], text('v'));
    await store.close();
    await expect(store.load(['k'])).rejects.toThrow(/closed/);
    await expect(store.batch([])).rejects.toThrow(/closed/);

    const second = await openStore(indexedDB);
    // A delete from elsewhere fires versionchange here; the store closes rather than blocking it.
    await new Promise<void>((resolve, reject) => {
      const request = indexedDB.deleteDatabase('keel-test');
      request.onsuccess = () => resolve();
      request.onerror = () => reject(request.error ?? new Error('delete failed'));
      request.onblocked = () => reject(new Error('delete was blocked by the open store'));
    });
    await expect(second.save(['k'], text('w'))).rejects.toThrow(/upgraded or deleted/);
    const fresh = await openStore(indexedDB);
    expect(await fresh.loadRange([])).toEqual([]);
  });

  it('reports a connection the browser closed itself instead of failing obscurely', async () => {
    const indexedDB = new IDBFactory();
    // Capture the store's connection as it opens, to close it from the "browser" side.
    const connections: IDBDatabase[] = [];
    const open = indexedDB.open.bind(indexedDB);
    const spy = new Proxy(indexedDB, {
      get: (target, prop) =>
        prop === 'open'
          ? (name: string, version?: number) => {
              const request = open(name, version);
              request.addEventListener('success', () => connections.push(request.result));
              return request;
            }
          : Reflect.get(target, prop),
    });
    const store = await openStore(spy);
    await store.save(['k'], text('v'));
    expect(connections).toHaveLength(1);
    forceCloseDatabase(connections[0]! as unknown as Parameters<typeof forceCloseDatabase>[0]);
    await expect(store.load(['k'])).rejects.toThrow(/browser closed/);
  });

  it('fails clearly where there is no IndexedDB at all', async () => {
    await expect(openIndexedDbStore('keel-nowhere')).rejects.toThrow(/no IndexedDB/);
  });
});
