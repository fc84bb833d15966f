import { type AwarenessFrame, type DocId, type KeelError, cryptoReady, deriveDocId, deriveDocKey, deriveEpochZeroSecret } from '@keel/engine';
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } from 'y-protocols/awareness';
import { beforeAll, describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { type Identity, createIdentity, linkNewDevice } from '../src/identity.js';
import { AwarenessSync } from '../src/sync/awareness-sync.js';

beforeAll(async () => {
  await cryptoReady();
});

/** Timers the test fires by hand, on a clock it advances. */
const fakeTime = () => {
  let now = 1_000_000;
  const due: { at: number; fn: () => void; id: number }[] = [];
  let next = 0;
  return {
    now: () => now,
    timers: {
      setTimeout: (fn: () => void, ms: number) => {
        due.push({ at: now + ms, fn, id: ++next });
        return next;
      },
      clearTimeout: (id: unknown) => {
        const i = due.findIndex((t) => t.id === id);
        if (i >= 0) due.splice(i, 1);
      },
    },
    advance(ms: number) {
      now += ms;
      for (;;) {
        due.sort((a, b) => a.at - b.at);
        if (!due[0] || due[0].at > now) return;
        due.shift()!.fn();
      }
    },
  };
};

/** One device's awareness of one document, its frames recorded instead of sent. */
const deviceOn = (identity: Identity, peers: Map<string, Uint8Array>, time: ReturnType<typeof fakeTime>) => {
  const docId: DocId = deriveDocId(identity.user.docIdKey, 'mood', 'journal');
  const key = deriveDocKey(deriveEpochZeroSecret(identity.user.rootKey), docId, 0);
  const sent: AwarenessFrame[] = [];
  const errors: KeelError[] = [];
  const sync = new AwarenessSync({
    identity,
    send: (frame) => (sent.push(frame), true),
    liveKey: (device) => peers.get(device),
    now: time.now,
    crossDevice: () => true,
    onError: (error) => errors.push(error),
    timers: time.timers,
  });
  const doc = new Y.Doc();
  sync.attach(docId, doc, { current: () => ({ epoch: 0, key }), get: (epoch) => (epoch === 0 ? key : undefined) });
  // What a provider does: the app shows cursors of this document. The announcement goes nowhere yet.
  const awareness = sync.use(docId)!;
  sent.splice(0);
  return { sync, doc, awareness, sent, errors, docId };
};

const pair = async () => {
  const idA = await createIdentity();
  const idB = await linkNewDevice(idA);
  const peers = new Map<string, Uint8Array>([
    [idA.device.deviceId, idA.device.publicKey],
    [idB.device.deviceId, idB.device.publicKey],
  ]);
  const time = fakeTime();
  const devices = { a: deviceOn(idA, peers, time), b: deviceOn(idB, peers, time), time };
  // Past the coalescing window of the announcements.
  time.advance(100);
  return devices;
};

describe('awareness sync', () => {
  it('coalesces a burst of local changes into at most one frame per 80 ms', async () => {
    const { a, time } = await pair();
    for (let i = 0; i < 100; i++) a.awareness.setLocalStateField('cursor', { head: i });
    time.advance(0);
    expect(a.sent).toHaveLength(1);
    for (let i = 0; i < 100; i++) {
      a.awareness.setLocalStateField('cursor', { head: 100 + i });
      time.advance(1);
    }
    // 100 ms of typing: the first frame, then one per 80 ms.
    expect(a.sent.length).toBeLessThanOrEqual(3);
    time.advance(100);
    const last = a.sent.length;
    expect(last).toBeLessThanOrEqual(4);
    // Timestamps strictly increase, so a receiver can refuse replays.
    const ats = a.sent.map((f) => f.aw.at);
    expect([...ats].sort((x, y) => x - y)).toEqual(ats);
    expect(new Set(ats).size).toBe(ats.length);
  });

  it("sends other tabs' states, never other devices' states, and answers a new device once", async () => {
    const { a, b, time } = await pair();
    // A state applied from another tab of device A (what the tab coordinator does).
    const tab = new Y.Doc();
    const tabAwareness = new Awareness(tab);
    tabAwareness.setLocalStateField('cursor', { head: 5 });
    applyAwarenessUpdate(a.awareness, encodeAwarenessUpdate(tabAwareness, [tab.clientID]), 'tab');
    b.awareness.setLocalStateField('user', { name: 'phone' });
    time.advance(100);
    b.sent.splice(0);
    expect(a.sent).toHaveLength(1);
    b.sync.receive(a.sent[0]!.aw);
    expect(b.errors).toEqual([]);
    expect(b.awareness.getStates().get(tab.clientID)).toEqual({ cursor: { head: 5 } });
    // B answered A (a device heard from for the first time) with its full state...
    expect(b.sent).toHaveLength(1);
    // ...but never sends A's states back, not even when y-protocols times them out (origin 'timeout').
    b.awareness.emit('update', [{ added: [], updated: [], removed: [tab.clientID] }, 'timeout']);
    time.advance(100);
    expect(b.sent).toHaveLength(1);
    // And A finds nothing in B's frame that speaks for A's clients.
    a.sync.receive(b.sent[0]!.aw);
    expect(a.errors).toEqual([]);
    tabAwareness.destroy();
  });

  it('refuses replays, old frames and frames naming this device or its clients', async () => {
    const { a, b, time } = await pair();
    a.awareness.setLocalStateField('cursor', { head: 1 });
    time.advance(100);
    const first = a.sent.at(-1)!.aw;
    b.sync.receive(first);
    b.sync.receive(first);
    expect(b.errors.map((e) => e.code)).toEqual(['STALE']);
    a.awareness.setLocalStateField('cursor', { head: 2 });
    time.advance(100);
    const second = a.sent.at(-1)!.aw;
    time.advance(31_000);
    b.sync.receive(second);
    expect(b.errors.map((e) => e.code)).toEqual(['STALE', 'STALE']);
    // The relay echoing B's own frame back to B.
    b.awareness.setLocalStateField('cursor', { head: 3 });
    time.advance(100);
    b.sync.receive(b.sent.at(-1)!.aw);
    expect(b.errors.at(-1)?.code).toBe('NOT_AUTHORIZED');
    expect(b.awareness.getStates().get(a.awareness.clientID)).toEqual({ cursor: { head: 1 } });
  });

  it('forgets a device that went away, and sends a null state when the document closes', async () => {
    const { a, b, time } = await pair();
    a.awareness.setLocalStateField('cursor', { head: 1 });
    time.advance(100);
    b.sync.receive(a.sent.at(-1)!.aw);
    expect(b.awareness.getStates().has(a.awareness.clientID)).toBe(true);
    b.sync.gone(a.sent.at(-1)!.aw.device);
    expect(b.awareness.getStates().has(a.awareness.clientID)).toBe(false);
    // A's link comes back: it announces its unchanged state (same clock), and B shows it again.
    time.advance(100);
    a.sync.subscribed([a.docId]);
    b.sync.receive(a.sent.at(-1)!.aw);
    expect(b.awareness.getStates().get(a.awareness.clientID)).toEqual({ cursor: { head: 1 } });
    // Likewise after B's own link dropped.
    b.sync.onLinkDown();
    expect(b.awareness.getStates().has(a.awareness.clientID)).toBe(false);
    time.advance(100);
    a.sync.subscribed([a.docId]);
    b.sync.receive(a.sent.at(-1)!.aw);
    expect(b.awareness.getStates().get(a.awareness.clientID)).toEqual({ cursor: { head: 1 } });
    // A comes back, then closes its document: the last frame removes its state on B.
    a.awareness.setLocalStateField('cursor', { head: 2 });
    time.advance(100);
    b.sync.receive(a.sent.at(-1)!.aw);
    expect(b.awareness.getStates().get(a.awareness.clientID)).toEqual({ cursor: { head: 2 } });
    time.advance(1);
    a.sync.detach(a.docId);
    b.sync.receive(a.sent.at(-1)!.aw);
    expect(b.awareness.getStates().has(a.awareness.clientID)).toBe(false);
    expect(b.errors).toEqual([]);
  });

  it('announces on subscribe only documents a provider handed out, so documents without cursors cost no frames', async () => {
    const idA = await createIdentity();
    const time = fakeTime();
    const sent: AwarenessFrame[] = [];
    const sync = new AwarenessSync({
      identity: idA,
      send: (frame) => (sent.push(frame), true),
      liveKey: () => undefined,
      now: time.now,
      crossDevice: () => true,
      onError: () => {},
      timers: time.timers,
    });
    const ids = ['crisis', 'journal'].map((name) => deriveDocId(idA.user.docIdKey, 'mood', name));
    for (const docId of ids) {
      const key = deriveDocKey(deriveEpochZeroSecret(idA.user.rootKey), docId, 0);
      sync.attach(docId, new Y.Doc(), { current: () => ({ epoch: 0, key }), get: () => key });
    }
    sync.subscribed(ids);
    expect(sent).toEqual([]);
    sync.use(ids[1]!);
    sync.subscribed(ids);
    expect(sent.map((f) => f.aw.doc)).toEqual([ids[1], ids[1]]);
    sync.close();
  });
});
