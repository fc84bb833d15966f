// Many tabs, one device: one leader tab holds the relay link, the others follow it; the leader
// is killed mid-stream and another tab takes over. Real relay process, real sockets and crypto.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { type Device, connectDevice, waitFor } from '../../../test/support/devices.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../../../test/support/relay-process.js';
import type { DocSpec } from '../src/client-api.js';
import { type Identity, createIdentity, linkNewDevice } from '../src/identity.js';
import { RelayWebSocket } from '../src/node.js';
import { joinWithPairingCode } from '../src/pairing.js';
import { createMemoryLocks, type LeaderLock } from '../src/tabs/leader-lock.js';
import { TabClient } from '../src/tabs/tab-client.js';
import { type Tab, installFakeIndexedDb, openTab } from './tabs-harness.js';

const SPEC: DocSpec = { class: 'checkin', name: 'tabs' };

let relay: RelayProcess;
beforeAll(async () => {
  relay = await startRelayProcess();
});
afterAll(async () => {
  await relay.stop();
  removeRelayDir(relay.dir);
});

let restoreIdb: () => void;
let locks: LeaderLock;
const cleanups: (() => Promise<void> | void)[] = [];
beforeEach(() => {
  restoreIdb = installFakeIndexedDb();
  locks = createMemoryLocks();
});
afterEach(async () => {
  try {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  } finally {
    restoreIdb();
  }
});

let names = 0;
const setup = async (tabCount: number): Promise<{ identity: Identity; tabs: Tab[]; other: Device }> => {
  const identity = await createIdentity();
  const name = `app${++names}`;
  const tabs: Tab[] = [];
  for (let i = 0; i < tabCount; i++) {
    const tab = await openTab({ url: relay.url, identity, name, locks, label: String.fromCharCode(97 + i) });
    cleanups.push(() => tab.dispose());
    tabs.push(tab);
  }
  const other = await connectDevice(relay.url, await linkNewDevice(identity));
  cleanups.push(() => other.client.close());
  return { identity, tabs, other };
};

const items = (doc: Y.Doc): string[] => doc.getArray<string>('items').toArray();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Fails a wait that never ends, with its name, instead of hanging the suite. */
const within = <T>(promise: Promise<T>, ms: number, what: string): Promise<T> => {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms))),
  ]);
};
const codesOf = (tabs: readonly Tab[], other: Device): string[] => [...tabs.flatMap((t) => t.errors), ...other.errors].map((e) => e.code);

describe('tabs of one device', () => {
  it('the first tab leads, the others follow; concurrent edits of two tabs and another device converge', async () => {
    const { tabs, other } = await setup(2);
    const [a, b] = tabs as [Tab, Tab];
    expect(a.client.isLeader).toBe(true);
    expect(b.client.isLeader).toBe(false);
    const docs = [await a.client.open(SPEC), await b.client.open(SPEC), await other.client.open(SPEC)];
    const expected: string[] = [];
    for (let i = 0; i < 30; i++) {
      for (const [j, doc] of docs.entries()) {
        const item = `${'abc'[j]}${i}`;
        doc.getArray<string>('items').push([item]);
        expected.push(item);
      }
      if (i % 5 === 0) await sleep(5);
    }
    await within(Promise.all([a.client.flush(), b.client.flush(), other.client.flush()]), 20_000, 'every flush');
    await waitFor(() => docs.every((doc) => items(doc).length === expected.length), 10_000, 'all three copies complete');
    for (const doc of docs) expect([...items(doc)].sort()).toEqual([...expected].sort());
    const bytes = docs.map((doc) => Buffer.from(Y.encodeStateAsUpdate(doc)).toString('hex'));
    // Same content, same order everywhere.
    expect(new Set(docs.map((doc) => items(doc).join(','))).size).toBe(1);
    expect(bytes.length).toBe(3);
    // The follower mirrors the leader's state.
    await waitFor(() => b.client.status === a.client.status && b.client.tier.name === a.client.tier.name, 5_000, 'mirrored status');
    expect(b.client.devices().map((d) => d.device).sort()).toEqual(a.client.devices().map((d) => d.device).sort());
    expect(codesOf(tabs, other)).not.toContain('COUNTER_REUSED');
    expect(relay.output()).not.toContain('COUNTER_REUSED');
  });

  it('the leader tab is killed mid-stream: another tab takes over, every flush resolves, nothing lost or duplicated', async () => {
    const { tabs, other } = await setup(3);
    const [a, b, c] = tabs as [Tab, Tab, Tab];
    expect(a.client.isLeader).toBe(true);
    const becameLeader = new Promise<void>((resolve) => b.client.once('leader', resolve));
    const docs = new Map<string, Y.Doc>([
      ['a', await a.client.open(SPEC)],
      ['b', await b.client.open(SPEC)],
      ['c', await c.client.open(SPEC)],
      ['d', await other.client.open(SPEC)],
    ]);
    const expected: string[] = [];
    const flushes: Promise<void>[] = [];
    let killing: Promise<void> | undefined;
    for (let i = 0; i < 40; i++) {
      for (const [label, doc] of docs) {
        // The killed tab makes no edits after its death.
        if (label === 'a' && killing) continue;
        const item = `${label}${i}`;
        doc.getArray<string>('items').push([item]);
        expected.push(item);
      }
      // Flushes started before the kill are answered by the new leader.
      if (i === 15) flushes.push(b.client.flush(), c.client.flush());
      if (i === 20) killing = a.kill();
      await sleep(i % 3 === 0 ? 4 : 0);
    }
    await killing;
    await within(becameLeader, 10_000, 'tab b leads');
    expect(b.client.isLeader).toBe(true);
    expect(c.client.isLeader).toBe(false);
    await within(Promise.all([...flushes, b.client.flush(), c.client.flush(), other.client.flush()]), 30_000, 'every flush');
    const live = [docs.get('b')!, docs.get('c')!, docs.get('d')!];
    await waitFor(() => live.every((doc) => items(doc).length >= expected.length), 15_000, 'every live copy complete');
    for (const doc of live) {
      // The exact set, each item once.
      expect(items(doc).length).toBe(expected.length);
      expect([...items(doc)].sort()).toEqual([...expected].sort());
    }
    expect(new Set(live.map((doc) => items(doc).join(','))).size).toBe(1);
    expect(codesOf(tabs, other)).not.toContain('COUNTER_REUSED');
    expect(relay.output()).not.toContain('COUNTER_REUSED');
  });

  it('calls from a follower run on the leader: crisis mode, assessments, pairing; state and events are mirrored', async () => {
    const { tabs, other } = await setup(2);
    const [a, b] = tabs as [Tab, Tab];
    const crisisSeen = new Promise<boolean>((resolve) => b.client.once('crisis', resolve));
    await within(b.client.setCrisisMode(true, 'user'), 10_000, 'setCrisisMode from a follower');
    expect(await within(crisisSeen, 5_000, 'crisis event in the follower')).toBe(true);
    expect(a.client.crisisMode).toBe(true);
    await waitFor(() => other.client.crisisMode, 10_000, 'crisis mode on the other device');
    const result = await b.client.recordAssessment('phq', { kind: 'phq9', answers: [0, 0, 0, 0, 0, 0, 0, 0, 0] });
    expect(result.crisis).toBe(false);
    expect(result.complete).toBe(true);
    // stats() (contract 4) is the leader's, mirrored.
    await within(b.client.flush(), 10_000, 'flush from a follower');
    await waitFor(() => a.client.stats().lastLatencyMs.crisis_mode !== undefined, 5_000, 'a crisis-mode latency measured');
    await waitFor(() => JSON.stringify(b.client.stats()) === JSON.stringify(a.client.stats()), 5_000, 'stats mirrored in the follower');
    await expect(b.client.recordAssessment('bad', { kind: 'phq9', answers: [9] })).rejects.toThrow();
    await expect(b.client.revokeDevice('not-a-device' as never)).rejects.toMatchObject({ code: 'SCHEMA' });
    await within(b.client.whenSynced(), 10_000, 'whenSynced from a follower');
    expect(b.client.status).toBe('synced');
    // Pairing offered by a follower tab: the leader holds the session, the follower gets `linked`.
    const offer = await within(b.client.startPairing({ ttlMs: 30_000 }), 10_000, 'startPairing from a follower');
    const joined = await joinWithPairingCode({ url: relay.url, code: offer.code, WebSocket: RelayWebSocket });
    const cert = await within(offer.linked, 10_000, 'linked in the follower');
    expect(cert.device).toBe(joined.device.deviceId);
    await waitFor(() => b.client.devices().some((d) => d.device === joined.device.deviceId), 5_000, 'the new device mirrored');
  });

  it('a leader tab closed normally while followers flush: the next tab answers their flushes', async () => {
    const { tabs, other } = await setup(3);
    const [a, b, c] = tabs as [Tab, Tab, Tab];
    const docB = await b.client.open(SPEC);
    const docC = await c.client.open(SPEC);
    const expected: string[] = [];
    for (let i = 0; i < 10; i++) {
      docB.getArray<string>('items').push([`b${i}`]);
      docC.getArray<string>('items').push([`c${i}`]);
      expected.push(`b${i}`, `c${i}`);
    }
    // The leader cannot reach the relay: the followers' flushes wait at the leader.
    a.cutLink();
    const flushes = [b.client.flush(), c.client.flush()];
    await waitFor(() => a.client.status === 'offline', 5_000, 'the leader offline');
    await new Promise((resolve) => setTimeout(resolve, 100));
    let settled = false;
    void Promise.all(flushes).then(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(settled).toBe(false);
    await a.client.close();
    await within(Promise.all(flushes), 20_000, 'flushes started under the old leader');
    expect(b.client.isLeader || c.client.isLeader).toBe(true);
    const docOther = await other.client.open(SPEC);
    await waitFor(() => items(docOther).length >= expected.length, 10_000, 'everything on the other device');
    expect([...items(docOther)].sort()).toEqual([...expected].sort());
    expect(codesOf(tabs, other)).not.toContain('COUNTER_REUSED');
  });

  it('malformed channel messages are dropped and reported; the tabs keep working', async () => {
    const { tabs, other } = await setup(2);
    const [a, b] = tabs as [Tab, Tab];
    const docB = await b.client.open(SPEC);
    const hostile = new BroadcastChannel(`keel-app${names}-tabs`);
    cleanups.push(() => hostile.close());
    const before = { a: a.errors.length, b: b.errors.length };
    const leaderId = a.client.tabId;
    const bad: unknown[] = [
      'hello',
      null,
      {},
      { v: 1, type: 'nonsense', from: 'x' },
      { v: 2, type: 'who-leads', from: 'x' },
      { v: 1, type: 'update', from: 'x', to: leaderId, id: -1, doc: a.client.docId(SPEC), update: new Uint8Array([1]) },
      { v: 1, type: 'update', from: 'x', to: leaderId, id: 1, doc: a.client.docId(SPEC), update: 'not bytes' },
      { v: 1, type: 'open', from: 'x', to: leaderId, id: 1, spec: { class: 'no-such-class', name: 'n' }, sv: new Uint8Array() },
      { v: 1, type: 'state', from: leaderId, state: { status: 'flying' } },
    ];
    for (const message of bad) hostile.postMessage(message);
    // Well-formed but hostile: bytes that are no Yjs update, sent to the leader as a change.
    hostile.postMessage({ v: 1, type: 'update', from: 'x', to: leaderId, id: 7, doc: a.client.docId(SPEC), update: new Uint8Array([255, 255, 255, 1]) });
    hostile.postMessage({ v: 1, type: 'awareness', from: 'x', to: leaderId, doc: a.client.docId(SPEC), update: new Uint8Array([255, 255]) });
    await waitFor(() => a.errors.length - before.a >= 11 && b.errors.length - before.b >= 9, 5_000, 'reports of the dropped messages');
    const reported = a.errors.slice(before.a).map((e) => e.message).join('\n');
    expect(reported).toContain('an update that does not apply');
    expect(reported).toContain('an awareness update that does not apply');
    expect(a.errors.slice(before.a).every((e) => e.code === 'SCHEMA')).toBe(true);
    // Still one working device.
    docB.getArray<string>('items').push(['after']);
    await within(b.client.flush(), 10_000, 'flush after hostile messages');
    const docOther = await other.client.open(SPEC);
    await waitFor(() => items(docOther).includes('after'), 10_000, 'the edit reaches the other device');
    expect(a.client.isLeader).toBe(true);
  });

  it('provider handles in every tab share awareness through the leader, across a handover', async () => {
    const { tabs } = await setup(3);
    const [a, b, c] = tabs as [Tab, Tab, Tab];
    const [pa, pb, pc] = [await a.client.provider(SPEC), await b.client.provider(SPEC), await c.client.provider(SPEC)];
    expect(pb.doc).toBe(await b.client.open(SPEC));
    pa.awareness.setLocalStateField('cursor', 'a');
    pb.awareness.setLocalStateField('cursor', 'b');
    pc.awareness.setLocalStateField('cursor', 'c');
    const cursors = (p: { awareness: { getStates(): Map<number, Record<string, unknown>> } }) =>
      [...p.awareness.getStates().values()].map((state) => state.cursor).filter((x) => x !== undefined).sort();
    await waitFor(() => [pa, pb, pc].every((p) => cursors(p).join() === 'a,b,c'), 5_000, 'every tab sees every cursor');
    // The provider reports the device's sync state.
    await within(c.client.whenSynced(), 10_000, 'synced');
    await waitFor(() => pc.synced, 5_000, 'the follower provider synced');
    await a.kill();
    await waitFor(() => b.client.isLeader, 10_000, 'b leads');
    pc.awareness.setLocalStateField('cursor', 'c2');
    await waitFor(() => cursors(pb).includes('c2'), 5_000, "c's new cursor reaches the new leader tab");
    pb.awareness.setLocalStateField('cursor', 'b2');
    await waitFor(() => cursors(pc).includes('b2'), 5_000, "the new leader tab's cursor reaches c");
    // The last handle of b goes: b's cursor leaves c.
    await pb.destroy();
    await waitFor(() => !cursors(pc).includes('b2'), 5_000, "b's cursor removed in c");
  });

  it('signing out from a follower closes every tab and no tab leads again over the wiped store', async () => {
    const { tabs } = await setup(3);
    const [a, b, c] = tabs as [Tab, Tab, Tab];
    const doc = await c.client.open(SPEC);
    doc.getArray<string>('items').push(['x']);
    await within(c.client.flush(), 10_000, 'flush');
    const name = `keel-app${names}`;
    expect((await indexedDB.databases()).map((d) => d.name)).toContain(name);
    await within(c.client.signOut({ wipe: true }), 10_000, 'signOut from a follower');
    await waitFor(() => tabs.every((t) => t.client.status === 'closed'), 5_000, 'every tab closed');
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(tabs.some((t) => t.client.isLeader)).toBe(false);
    const left = (await indexedDB.databases()).map((d) => d.name ?? '').filter((n) => n === name || n.startsWith(`${name}-doc-`));
    expect(left).toEqual([]);
    expect(a.client.status).toBe('closed');
    expect(b.client.status).toBe('closed');
  });

  it('a tab that cannot start the client when it comes to lead fails clearly and frees the lock', async () => {
    const identity = await createIdentity();
    const channel = new BroadcastChannel('keel-broken-tabs');
    const failing = TabClient.create({
      identity,
      name: 'broken',
      lock: locks,
      channel,
      createLeader: () => Promise.reject(new Error('IndexedDB refused')),
    });
    await expect(failing).rejects.toMatchObject({ code: 'LEADER_FAILED' });
    // The lock is free again: the next tab leads.
    const next = await openTab({ url: relay.url, identity, name: 'broken', locks, label: 'n' });
    cleanups.push(() => next.dispose());
    expect(next.client.isLeader).toBe(true);
  });

  it("a follower's pairing offer dies with the leader that held it: linked rejects with LEADER_CHANGED", async () => {
    const { tabs } = await setup(2);
    const [a, b] = tabs as [Tab, Tab];
    const offer = await within(b.client.startPairing({ ttlMs: 30_000 }), 10_000, 'startPairing from a follower');
    await a.kill();
    await expect(within(offer.linked, 10_000, 'linked settles')).rejects.toMatchObject({ code: 'LEADER_CHANGED' });
    // The new leader offers a new code.
    await waitFor(() => b.client.isLeader, 10_000, 'b leads');
    const again = await within(b.client.startPairing({ ttlMs: 30_000 }), 10_000, 'a new offer');
    expect(again.code).not.toBe(offer.code);
    again.cancel();
  });
});
