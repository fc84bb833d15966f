import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IDBFactory, IDBKeyRange } from 'fake-indexeddb';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { connectDevice, waitFor } from '../../../test/support/devices.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../../../test/support/relay-process.js';
import { createBrowserClient } from '../src/browser.js';
import { createIdentity, linkNewDevice } from '../src/identity.js';
import { createNodeClient } from '../src/node.js';
import { createMemoryStore } from '../src/storage/memory-store.js';
import { browserLocalData } from '../src/storage/browser-local-data.js';
import { openIndexedDbStore } from '../src/storage/indexeddb-store.js';

const WS = WebSocket as unknown as new (url: string) => unknown;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const startRelay = async (): Promise<RelayProcess> => {
  const relay = await startRelayProcess();
  cleanups.push(async () => {
    await relay.stop();
    removeRelayDir(relay.dir);
  });
  return relay;
};

/** Installs a fresh fake IndexedDB as the globals (y-indexeddb reads only those) until the test ends. */
const fakeOrigin = (): IDBFactory => {
  const factory = new IDBFactory();
  const saved = (['indexedDB', 'IDBKeyRange'] as const).map((name) => [name, Object.getOwnPropertyDescriptor(globalThis, name)] as const);
  for (const [name, value] of [
    ['indexedDB', factory],
    ['IDBKeyRange', IDBKeyRange],
  ] as const) {
    Object.defineProperty(globalThis, name, { value, configurable: true, writable: true, enumerable: false });
  }
  cleanups.push(() => {
    for (const [name, descriptor] of saved) {
      if (descriptor) Object.defineProperty(globalThis, name, descriptor);
      else Reflect.deleteProperty(globalThis, name);
    }
  });
  return factory;
};

const databaseNames = async (factory: IDBFactory) => (await factory.databases()).map((db) => db.name ?? '').sort();

describe('signOut({ wipe: true })', () => {
  it('Node, a SQLite file the client opened: the file (and its WAL) is gone, and the user’s data lives on at the relay', async () => {
    const relay = await startRelay();
    const dir = mkdtempSync(join(tmpdir(), 'keel-signout-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const sqlitePath = join(dir, 'device.db');
    const identity = await createIdentity();
    const client = await createNodeClient({ url: relay.url, identity, sqlitePath, backoff: { baseMs: 50, maxMs: 500 } });
    cleanups.push(() => client.close());
    const doc = await client.open({ class: 'safety_plan', name: 'plan' });
    doc.getText('reasons').insert(0, 'my sister');
    await client.flush();
    expect(existsSync(sqlitePath)).toBe(true);

    await client.signOut({ wipe: true });
    expect(client.status).toBe('closed');
    expect(readdirSync(dir), 'nothing of the device left in its directory').toEqual([]);
    // Signing out one device loses nothing of the user's: another device still gets the plan.
    const b = await connectDevice(relay.url, await linkNewDevice(identity));
    cleanups.push(() => b.client.close());
    const docB = await b.client.open({ class: 'safety_plan', name: 'plan' });
    await waitFor(() => docB.getText('reasons').toString() === 'my sister', 5_000, 'the plan at B');
  });

  it('Node, a store the app passed: every entry is removed; without wipe, nothing is', async () => {
    const relay = await startRelay();
    const identity = await createIdentity();
    const kept = createMemoryStore();
    const a = await createNodeClient({ url: relay.url, identity, storage: kept });
    cleanups.push(() => a.close());
    (await a.open({ class: 'mood', name: 'today' })).getMap('mood').set('score', 3);
    await a.flush();
    await a.signOut();
    expect((await kept.loadRange([])).length, 'a plain sign-out keeps the data').toBeGreaterThan(0);

    const wiped = createMemoryStore();
    const b = await createNodeClient({ url: relay.url, identity: await linkNewDevice(identity), storage: wiped });
    cleanups.push(() => b.close());
    (await b.open({ class: 'mood', name: 'today' })).getMap('mood').set('score', 4);
    await b.flush();
    expect((await wiped.loadRange([])).length).toBeGreaterThan(0);
    await b.signOut({ wipe: true });
    expect(await wiped.loadRange([])).toEqual([]);
  });

  it('browser: the Keel database and every keel-<name>-doc-* database are deleted; another name’s are not', async () => {
    const relay = await startRelay();
    const factory = fakeOrigin();
    const identity = await createIdentity();
    // Another account on the same origin: must survive.
    const other = await createBrowserClient({ name: 'other', url: relay.url, identity: await createIdentity(), WebSocket: WS });
    cleanups.push(() => other.close());
    (await other.open({ class: 'mood', name: 'x' })).getMap('m').set('k', 1);
    await other.flush();

    const client = await createBrowserClient({ name: 'me', url: relay.url, identity, WebSocket: WS });
    cleanups.push(() => client.close());
    // Node has no navigator.storage: not asked, no answer.
    expect(client.storagePersisted).toBeUndefined();
    for (const name of ['plan', 'contacts']) (await client.open({ class: 'safety_plan', name })).getText('t').insert(0, name);
    await client.flush();
    const before = await databaseNames(factory);
    expect(before.filter((n) => n.startsWith('keel-me-doc-')).length, `databases: ${before.join(', ')}`).toBeGreaterThanOrEqual(3);
    expect(before).toContain('keel-me');

    await client.signOut({ wipe: true });
    const after = await databaseNames(factory);
    expect(after.filter((n) => n === 'keel-me' || n.startsWith('keel-me-'))).toEqual([]);
    expect(after).toContain('keel-other');
    expect(after.filter((n) => n.startsWith('keel-other-doc-')).length).toBeGreaterThan(0);
    await other.close();
  });

  it('browser: createBrowserClient asks for persistent storage and reports the answer', async () => {
    fakeOrigin();
    // Node has no navigator.storage; a browser's answer stands in (Playwright runs the real one).
    let asked = 0;
    const saved = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
    Object.defineProperty(globalThis, 'navigator', { value: { storage: { persist: async () => (asked++, false) } }, configurable: true, writable: true });
    cleanups.push(() => {
      if (saved) Object.defineProperty(globalThis, 'navigator', saved);
      else Reflect.deleteProperty(globalThis, 'navigator');
    });
    const client = await createBrowserClient({ name: 'p', url: 'ws://127.0.0.1:9', identity: await createIdentity(), WebSocket: WS });
    cleanups.push(() => client.close());
    expect(asked).toBe(1);
    await waitFor(() => client.storagePersisted === false, 1_000, 'the answer');
  });

  it('browser: without indexedDB.databases(), the documents the state database records are found and deleted', async () => {
    const factory = fakeOrigin();
    const names = ['keel-old-doc-aaa', 'keel-old-doc-bbb'];
    const state = await openIndexedDbStore('keel-old', { indexedDB: factory, IDBKeyRange });
    await state.save(['doc', 'aaa', 'meta'], new Uint8Array([1]));
    await state.save(['doc', 'bbb', 'meta'], new Uint8Array([2]));
    for (const name of names) (await openIndexedDbStore(name, { indexedDB: factory, IDBKeyRange })).close();
    // An older browser: no databases().
    const legacy = Object.assign(Object.create(factory) as IDBFactory, { databases: undefined });
    await browserLocalData('old', { store: state, indexedDB: legacy, IDBKeyRange }).wipe();
    expect(await databaseNames(factory)).toEqual([]);
  });

  it('browser: a tab without a store of its own (a follower) wipes the same databases', async () => {
    const relay = await startRelay();
    const factory = fakeOrigin();
    const client = await createBrowserClient({ name: 'tab', url: relay.url, identity: await createIdentity(), WebSocket: WS });
    cleanups.push(() => client.close());
    await client.open({ class: 'safety_plan', name: 'plan' });
    await client.flush();
    await client.close();
    expect((await databaseNames(factory)).filter((n) => n.startsWith('keel-tab')).length).toBeGreaterThanOrEqual(2);
    await browserLocalData('tab').wipe();
    expect(await databaseNames(factory)).toEqual([]);
  });
});
