import type { DocId } from '@keel/engine';
import { IDBFactory, IDBKeyRange } from 'fake-indexeddb';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { IndexeddbPersistence } from 'y-indexeddb';
import * as Y from 'yjs';
import { connectDevice, waitFor } from '../../../test/support/devices.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../../../test/support/relay-process.js';
import { createBrowserClient } from '../src/browser.js';
import { type ClientError, type DocSpec, type KeelClient, createClient } from '../src/client.js';
import { type Identity, createIdentity, linkNewDevice } from '../src/identity.js';
import type { ClientStore } from '../src/storage/client-store.js';
import { openIndexedDbStore } from '../src/storage/indexeddb-store.js';
import { createYIndexedDbState } from '../src/storage/y-indexeddb-state.js';

/** Nothing listens on the discard port: the client stays offline, retrying with backoff. */
const OFFLINE_URL = 'ws://127.0.0.1:9';
const WS = WebSocket as unknown as new (url: string) => unknown;
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

// y-indexeddb reaches IndexedDB only through the globals; each test gets a fresh fake "origin".
const GLOBALS = ['indexedDB', 'IDBKeyRange'] as const;
const savedGlobals = GLOBALS.map((name) => [name, Object.getOwnPropertyDescriptor(globalThis, name)] as const);
let factory: IDBFactory;
const cleanups: (() => Promise<void> | void)[] = [];

beforeEach(() => {
  factory = new IDBFactory();
  for (const [name, value] of [
    ['indexedDB', factory],
    ['IDBKeyRange', IDBKeyRange],
  ] as const) {
    Object.defineProperty(globalThis, name, { value, configurable: true, writable: true, enumerable: false });
  }
});

afterEach(async () => {
  try {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  } finally {
    for (const [name, descriptor] of savedGlobals) {
      if (descriptor) Object.defineProperty(globalThis, name, descriptor);
      else Reflect.deleteProperty(globalThis, name);
    }
  }
});

interface BrowserDevice {
  readonly client: KeelClient;
  readonly storage: ClientStore;
  readonly errors: ClientError[];
  /** The tab goes away: client first (it settles every write), then its store. */
  close(): Promise<void>;
}

/** One page load of device A: the IndexedDB store for Keel's state, y-indexeddb for content. */
const loadPage = async (identity: Identity, url: string): Promise<BrowserDevice> => {
  const storage = await openIndexedDbStore('keel-a', { indexedDB: factory, IDBKeyRange });
  cleanups.push(() => storage.close());
  const client = await createClient({
    url,
    identity,
    storage,
    WebSocket: WS,
    backoff: { baseMs: 50, maxMs: 500 },
    documentState: createYIndexedDbState({ dbPrefix: 'keel-a-doc-' }),
  });
  cleanups.push(() => client.close());
  const errors: ClientError[] = [];
  client.on('error', (e) => errors.push(e));
  return {
    client,
    storage,
    errors,
    close: async () => {
      await client.close();
      await storage.close();
    },
  };
};

const startRelay = async (): Promise<RelayProcess> => {
  const relay = await startRelayProcess();
  cleanups.push(async () => {
    await relay.stop();
    removeRelayDir(relay.dir);
  });
  return relay;
};

const linkDeviceB = async (url: string, identity: Identity) => {
  const b = await connectDevice(url, await linkNewDevice(identity));
  cleanups.push(() => b.client.close());
  return b;
};

/** Every local update not yet sealed, merged, as the store holds it under ['pending', docId]. */
const pendingOf = async (storage: ClientStore, docId: DocId): Promise<Uint8Array | undefined> => {
  const chunks = await storage.loadRange(['pending', docId]);
  return chunks.length === 0 ? undefined : Y.mergeUpdates(chunks.map((c) => c.data));
};

/** The document an update rebuilds from nothing. */
const docFrom = (update: Uint8Array): Y.Doc => {
  const doc = new Y.Doc();
  Y.applyUpdate(doc, update);
  return doc;
};

/** Polls an async condition every 5 ms; fails after `timeoutMs`. */
const pollFor = async (predicate: () => Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

const yieldTurn = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

const SPECS: readonly DocSpec[] = [
  { class: 'safety_plan', name: 'my plan' }, // crisis class
  { class: 'mood', name: 'today' },
  { class: 'breathing_session', name: 'morning' },
];

/** Several edits per document over several event-loop turns (so several pending entries), with deletions. */
const editOffline = async (client: KeelClient, round: string) => {
  for (const spec of SPECS) {
    const doc = await client.open(spec);
    for (let i = 0; i < 5; i++) {
      doc.getArray<string>('entries').push([`${spec.name}-${round}-${i}`]);
      doc.getText('notes').insert(0, `${round}${i} `);
      if (i % 2 === 1) doc.getText('notes').delete(0, 2);
      await yieldTurn();
    }
  }
};

describe('browser persistence (IndexedDB store + y-indexeddb, fake-indexeddb)', () => {
  it('a reload while offline loses nothing, keeps the unsent edits pending, and sends them once online', async () => {
    const identity = await createIdentity();
    const first = await loadPage(identity, OFFLINE_URL);
    const docIds = SPECS.map((spec) => first.client.docId(spec));
    await editOffline(first.client, 'r1');
    await first.client.setCrisisMode(true);
    const crisisId = first.client.docId({ class: 'crisis_mode', name: 'state' });
    const allIds = [...docIds, crisisId];
    const expected = new Map<DocId, string>();
    for (const spec of [...SPECS, { class: 'crisis_mode', name: 'state' } as const]) {
      expected.set(first.client.docId(spec), hex(Y.encodeStateAsUpdate(await first.client.open(spec))));
    }
    expect(first.client.status).toBe('offline');
    await first.close();

    // Content lives in y-indexeddb; Keel's store has only meta and pending updates (no outbox: never online).
    const stored = await openIndexedDbStore('keel-a', { indexedDB: factory, IDBKeyRange });
    cleanups.push(() => stored.close());
    const keys = (await stored.loadRange([])).map((c) => c.key);
    expect(keys.filter((k) => k[0] === 'doc' && k[2] !== 'meta'), 'no document content in the Keel store').toEqual([]);
    expect(keys.filter((k) => k[0] === 'outbox')).toEqual([]);
    for (const id of allIds) expect((await stored.loadRange(['pending', id])).length, `pending entries of ${id}`).toBeGreaterThan(0);
    await stored.close();
    // Database names carry opaque ids only, never a class or a name.
    const names = (await factory.databases()).map((d) => d.name ?? '').sort();
    expect(names).toEqual(['keel-a', ...allIds.map((id) => `keel-a-doc-${id}`)].sort());
    for (const leak of ['plan', 'mood', 'today', 'breathing', 'morning', 'safety', 'crisis']) {
      expect(names.filter((n) => n.includes(leak))).toEqual([]);
    }

    // The page reloads, still offline: everything is back from IndexedDB, byte for byte.
    const second = await loadPage(identity, OFFLINE_URL);
    expect(second.client.crisisMode, 'crisis mode restored offline').toBe(true);
    for (const spec of SPECS) {
      const doc = await second.client.open(spec);
      expect(hex(Y.encodeStateAsUpdate(doc)), `${spec.class} content after reload`).toBe(expected.get(second.client.docId(spec)));
    }
    for (const id of allIds) {
      // Pending holds every local edit since creation: it alone rebuilds the document.
      const pending = await pendingOf(second.storage, id);
      expect(pending, `pending of ${id}`).toBeDefined();
      expect(hex(Y.encodeStateAsUpdate(docFrom(pending!)))).toBe(expected.get(id));
    }
    await editOffline(second.client, 'r2');
    const final = new Map<DocId, { bytes: string; entries: string[]; notes: string }>();
    for (const spec of SPECS) {
      const doc = await second.client.open(spec);
      final.set(second.client.docId(spec), {
        bytes: hex(Y.encodeStateAsUpdate(doc)),
        entries: doc.getArray<string>('entries').toArray(),
        notes: doc.getText('notes').toString(),
      });
    }
    expect(final.get(docIds[0]!)!.entries).toHaveLength(10);
    expect(second.errors).toEqual([]);
    await second.close();

    // The network is back: the next load sends everything; a newly linked device gets all of it.
    const relay = await startRelay();
    const third = await loadPage(identity, relay.url);
    for (const spec of SPECS) await third.client.open(spec);
    await third.client.flush();
    for (const id of allIds) expect(await third.storage.loadRange(['pending', id])).toEqual([]);
    expect(await third.storage.loadRange(['outbox'])).toEqual([]);

    const b = await linkDeviceB(relay.url, identity);
    const docsB = await Promise.all(SPECS.map((spec) => b.client.open(spec)));
    await waitFor(() => SPECS.every((_, i) => docsB[i]!.getArray('entries').length === 10), 10_000, 'all entries at device B');
    await waitFor(() => b.client.crisisMode, 10_000, 'crisis mode at device B');
    for (const [i, spec] of SPECS.entries()) {
      const want = final.get(b.client.docId(spec))!;
      expect(docsB[i]!.getArray<string>('entries').toArray()).toEqual(want.entries);
      expect(docsB[i]!.getText('notes').toString()).toBe(want.notes);
      expect(hex(Y.encodeStateAsUpdate(docsB[i]!)), `${spec.class} bytes at device B`).toBe(want.bytes);
    }
    expect([...third.errors, ...b.errors]).toEqual([]);
    await third.close();

    // Acknowledged, nothing pending any more: a later load gets the content from y-indexeddb alone.
    const fourth = await loadPage(identity, OFFLINE_URL);
    for (const spec of SPECS) {
      const doc = await fourth.client.open(spec);
      expect(await fourth.storage.loadRange(['pending', fourth.client.docId(spec)])).toEqual([]);
      expect(hex(Y.encodeStateAsUpdate(doc)), `${spec.class} from y-indexeddb alone`).toBe(final.get(fourth.client.docId(spec))!.bytes);
    }
  });

  describe('crash between the two stores: y-indexeddb has an edit Keel never recorded', () => {
    const SPEC: DocSpec = { class: 'crisis_contacts', name: 'contacts' };

    /** Reloads offline and checks the unrecorded edit became pending; then sends it and checks device B. */
    const recoverAndSync = async (identity: Identity, docId: DocId, expectedBytes: string, check: (doc: Y.Doc) => void) => {
      const reloaded = await loadPage(identity, OFFLINE_URL);
      const doc = await reloaded.client.open(SPEC);
      expect(hex(Y.encodeStateAsUpdate(doc))).toBe(expectedBytes);
      check(doc);
      const pending = await pendingOf(reloaded.storage, docId);
      expect(pending, 'the unrecorded edit is pending again').toBeDefined();
      check(docFrom(pending!));
      await reloaded.close();

      const relay = await startRelay();
      const online = await loadPage(identity, relay.url);
      await online.client.open(SPEC);
      await online.client.flush();
      expect(await online.storage.loadRange(['pending', docId])).toEqual([]);
      const b = await linkDeviceB(relay.url, identity);
      const docB = await b.client.open(SPEC);
      await b.client.whenSynced();
      await waitFor(() => hex(Y.encodeStateAsUpdate(docB)) === expectedBytes, 10_000, 'device B converged');
      check(docB);
      expect([...online.errors, ...b.errors]).toEqual([]);
    };

    it('an edit written to y-indexeddb without a Keel client (its pending write lost) is recovered and synced', async () => {
      const identity = await createIdentity();
      const first = await loadPage(identity, OFFLINE_URL);
      const docId = first.client.docId(SPEC);
      (await first.client.open(SPEC)).getMap('contacts').set('friend', 'Sam');
      await first.close();

      // Straight into the document's database: as if Keel crashed right after y-indexeddb's write.
      const raw = new Y.Doc();
      const persistence = new IndexeddbPersistence(`keel-a-doc-${docId}`, raw);
      cleanups.push(() => persistence.destroy());
      await persistence.whenSynced;
      raw.getMap('contacts').set('therapist', 'Dr. Okafor');
      const expectedBytes = hex(Y.encodeStateAsUpdate(raw));
      await persistence.destroy();
      raw.destroy();

      await recoverAndSync(identity, docId, expectedBytes, (doc) => {
        expect(doc.getMap('contacts').get('therapist')).toBe('Dr. Okafor');
      });
    });

    it('an edit whose Keel batch (pending + meta) was lost while y-indexeddb kept it is recovered and synced', async () => {
      const identity = await createIdentity();
      const first = await loadPage(identity, OFFLINE_URL);
      const docId = first.client.docId(SPEC);
      const doc = await first.client.open(SPEC);
      doc.getMap('contacts').set('friend', 'Sam');
      await pollFor(async () => (await first.storage.loadRange(['pending', docId])).length > 0, 'first edit stored');
      // Keel's store as it was before the second edit.
      const before = await first.storage.loadRange([]);
      doc.getMap('contacts').set('crisis line', '988');
      const expectedBytes = hex(Y.encodeStateAsUpdate(doc));
      await first.close();

      // The crash: Keel's batch for the second edit never committed; y-indexeddb's write did.
      const store = await openIndexedDbStore('keel-a', { indexedDB: factory, IDBKeyRange });
      cleanups.push(() => store.close());
      await store.removeRange([]);
      await store.batch(before.map((c) => ({ op: 'save' as const, key: c.key, data: c.data })));
      expect((await store.loadRange(['pending', docId])).map((c) => docFrom(c.data).getMap('contacts').get('crisis line'))).not.toContain('988');
      await store.close();

      await recoverAndSync(identity, docId, expectedBytes, (d) => {
        expect(d.getMap('contacts').toJSON()).toEqual({ friend: 'Sam', 'crisis line': '988' });
      });
    });
  });

  it('createBrowserClient keeps a document across a reload and names its databases after `name`', async () => {
    const identity = await createIdentity();
    const spec: DocSpec = { class: 'checkin', name: 'evening' };
    const first = await createBrowserClient({ url: OFFLINE_URL, identity, name: 'app', WebSocket: WS, backoff: { baseMs: 50, maxMs: 500 } });
    cleanups.push(() => first.close());
    const doc = await first.open(spec);
    doc.getText('note').insert(0, 'slept badly, feeling calmer now');
    const expected = hex(Y.encodeStateAsUpdate(doc));
    const docId = first.docId(spec);
    await first.close();

    const names = (await factory.databases()).map((d) => d.name);
    expect(names).toContain('keel-app');
    expect(names).toContain(`keel-app-doc-${docId}`);

    const second = await createBrowserClient({ url: OFFLINE_URL, identity, name: 'app', WebSocket: WS, backoff: { baseMs: 50, maxMs: 500 } });
    cleanups.push(() => second.close());
    const again = await second.open(spec);
    expect(hex(Y.encodeStateAsUpdate(again))).toBe(expected);
    expect(again.getText('note').toString()).toBe('slept badly, feeling calmer now');
  });
});
