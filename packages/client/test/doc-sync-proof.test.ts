import { encodeSnapshotPayload, sealEnvelope } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { createMemoryStore } from '../src/storage/memory-store.js';
import { MAX_KNOWN_SEQS, markSeq, markWithheld, newDocMeta, rewindTo } from '../src/sync/doc-meta.js';
import { mapUpdate, open, setup, writeAndSeal } from './doc-harness.js';

/**
 * What a DocSync believes of the relay: an ack only claims, proof is the device's own envelope
 * back in the log (or a snapshot covering it), and a counter gap rewinds the received position.
 * Real keys, real Yjs; the relay's frames are played by hand.
 */

describe('an ack is a claim', () => {
  it('keeps the envelope durably and never marks the claimed seq; only its own envelope back in the log removes it', async () => {
    const { a, b, docId, key } = await setup();
    const store = createMemoryStore();
    const h = await open(a, [a, b], store, docId, key);
    const [env] = await writeAndSeal(h, 'call', '988');
    expect(h.sync.claim(env!.counter, 1)).toBe(true);
    expect(h.sync.claim(env!.counter, 1)).toBe(false);
    expect(h.sync.unconfirmed).toBe(1);
    expect(h.sync.lastSeq).toBe(0);
    expect(h.sync.busy).toBe(true);
    await h.sync.close();

    // A restart keeps it: the relay's word alone never emptied the outbox.
    const again = await open(a, [a, b], store, docId, key);
    expect(again.sync.outbox().map((e) => e.sig)).toEqual([env!.sig]);
    // An envelope of ours that is not the one we sealed (another signature) proves nothing.
    await again.sync.receive([{ seq: 1, env: { ...env!, sig: env!.sig.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) } }]);
    expect(again.sync.unconfirmed).toBe(1);
    await again.sync.receive([{ seq: 1, env: env! }]);
    await again.sync.settle();
    expect(again.sync.unconfirmed).toBe(0);
    expect(again.sync.lastSeq).toBe(1);
    await again.sync.close();
    const third = await open(a, [a, b], store, docId, key);
    expect(third.sync.unconfirmed).toBe(0);
    expect(third.sync.lastSeq).toBe(1);
    await third.sync.close();
  });

  it('a verified snapshot whose author counters cover our envelope proves it', async () => {
    const { a, b, docId, key, lane } = await setup();
    const h = await open(a, [a, b], createMemoryStore(), docId, key);
    const [env] = await writeAndSeal(h, 'call', '988');
    const snapshot = sealEnvelope(
      { doc: docId, kind: 'snapshot', epoch: 0, device: b.device.deviceId, counter: 1, lane, base: 3 },
      encodeSnapshotPayload({ authors: { [a.device.deviceId]: env!.counter - 1 }, state: Y.encodeStateAsUpdate(h.sync.doc) }),
      { key, signingKey: b.device.secretKey },
    );
    await h.sync.receiveSnapshot(snapshot);
    expect(h.sync.unconfirmed).toBe(1);
    const covering = sealEnvelope(
      { doc: docId, kind: 'snapshot', epoch: 0, device: b.device.deviceId, counter: 2, lane, base: 4 },
      encodeSnapshotPayload({ authors: { [a.device.deviceId]: env!.counter }, state: Y.encodeStateAsUpdate(h.sync.doc) }),
      { key, signingKey: b.device.secretKey },
    );
    await h.sync.receiveSnapshot(covering);
    expect(h.sync.unconfirmed).toBe(0);
    expect(h.errors).toEqual([]);
    await h.sync.close();
  });

  it('its own snapshot claims only proved counters, so no reader takes an unproved change for logged', async () => {
    const { a, b, docId, key } = await setup();
    const h = await open(a, [a, b], createMemoryStore(), docId, key);
    const [first] = await writeAndSeal(h, 'one', 1);
    await h.sync.receive([{ seq: 1, env: first! }]);
    await writeAndSeal(h, 'two', 2);
    const snap = await h.sync.snapshot(h.sync.baseLane);
    expect(snap).toBeDefined();
    expect(h.sync.unconfirmed).toBe(1);
    await h.sync.close();
  });
});

describe('a stub (own: counter, signature) in a proof catch-up', () => {
  /** The same signature with one character changed: an envelope this device never sealed. */
  const otherSig = (sig: string): string => sig.replace(/^./, (c) => (c === 'A' ? 'B' : 'A'));

  it('with the counter and signature of an outbox envelope proves it, durably, and marks its seq', async () => {
    const { a, b, docId, key } = await setup();
    const store = createMemoryStore();
    const h = await open(a, [a, b], store, docId, key);
    const [env] = await writeAndSeal(h, 'call', '988');
    h.sync.claim(env!.counter, 1);
    await h.sync.receive([{ seq: 1, own: { counter: env!.counter, sig: env!.sig } }]);
    h.sync.markSynced(1);
    await h.sync.settle();
    expect(h.sync.unconfirmed).toBe(0);
    expect(h.sync.claimed()).toEqual([]);
    expect(h.sync.lastSeq).toBe(1);
    expect(h.sync.synced).toBe(true);
    expect(h.refetches).toEqual([]);
    await h.sync.close();
    const again = await open(a, [a, b], store, docId, key);
    expect(again.sync.unconfirmed).toBe(0);
    expect(again.sync.lastSeq).toBe(1);
    expect(again.sync.doc.getMap('m').get('call')).toBe('988');
    await again.sync.close();
  });

  it('for a counter already proved only marks its seq', async () => {
    const { a, b, docId, key } = await setup();
    const h = await open(a, [a, b], createMemoryStore(), docId, key);
    const [env] = await writeAndSeal(h, 'call', '988');
    await h.sync.receive([{ seq: 1, env: env! }]);
    // The same entry again (a second proof request, say): nothing left to prove, its seq is ours.
    h.sync.resetSynced();
    await h.sync.receive([{ seq: 2, own: { counter: env!.counter, sig: otherSig(env!.sig) } }]);
    await h.sync.settle();
    expect(h.sync.lastSeq).toBe(2);
    expect(h.refetches).toEqual([]);
    expect(h.errors).toEqual([]);
    await h.sync.close();
  });

  it('with a signature this device does not hold proves and marks nothing, and asks for the log in full once per connection', async () => {
    const { a, b, docId, key, sealBy } = await setup();
    const store = createMemoryStore();
    const h = await open(a, [a, b], store, docId, key);
    const [env] = await writeAndSeal(h, 'call', '988');
    h.sync.claim(env!.counter, 1);
    // A relay making up a stub for our counter, then B's entry after it in the same frame.
    await h.sync.receive([
      { seq: 1, own: { counter: env!.counter, sig: otherSig(env!.sig) } },
      { seq: 2, env: sealBy(b, 1, mapUpdate('b1', 1)) },
    ]);
    h.sync.markSynced(2);
    await h.sync.settle();
    expect(h.sync.unconfirmed).toBe(1);
    expect(h.sync.claimed()).toEqual([env!.counter]);
    // Seq 2 is received, seq 1 is not: the position stays before the stub.
    expect(h.sync.lastSeq).toBe(0);
    expect(h.sync.synced).toBe(false);
    expect(h.refetches).toEqual([0]);
    // Another one on this connection: still nothing, and no second request (no loop).
    await h.sync.receive([{ seq: 3, own: { counter: env!.counter + 1, sig: env!.sig } }]);
    await h.sync.settle();
    expect(h.refetches).toEqual([0]);
    expect(h.sync.lastSeq).toBe(0);
    // The full catch-up: our envelope itself proves it, and the position moves on.
    await h.sync.receive([{ seq: 1, env: env! }]);
    await h.sync.settle();
    expect(h.sync.unconfirmed).toBe(0);
    expect(h.sync.lastSeq).toBe(2);
    expect(h.sync.synced).toBe(true);
    // A new connection may ask again.
    h.sync.resetSynced();
    await h.sync.receive([{ seq: 4, own: { counter: 9, sig: env!.sig } }]);
    await h.sync.settle();
    expect(h.refetches).toEqual([0, 2]);
    expect(h.sync.lastSeq).toBe(2);
    await h.sync.close();
  });

  it('for an entry of ours this device no longer holds (older storage) skips no content: the full catch-up brings it', async () => {
    const { a, b, docId, key } = await setup();
    // The device wrote #1 and #2 from storage it later lost; it comes back with an empty store.
    const before = await open(a, [a, b], createMemoryStore(), docId, key);
    const [one] = await writeAndSeal(before, 'one', 1);
    const [two] = await writeAndSeal(before, 'two', 2);
    await before.sync.close();
    const h = await open(a, [a, b], createMemoryStore(), docId, key);
    const [three] = await writeAndSeal(h, 'three', 3);
    h.sync.claim(three!.counter, 3);
    // Its third write reused counter 1 (the relay refuses it); the log holds the old #1 and #2.
    await h.sync.receive([
      { seq: 1, own: { counter: one!.counter, sig: one!.sig } },
      { seq: 2, own: { counter: two!.counter, sig: two!.sig } },
    ]);
    await h.sync.settle();
    expect(h.sync.lastSeq).toBe(0);
    expect(h.refetches).toEqual([0]);
    expect(h.sync.doc.getMap('m').toJSON()).toEqual({ three: 3 });
    await h.sync.receive([
      { seq: 1, env: one! },
      { seq: 2, env: two! },
    ]);
    await h.sync.settle();
    expect(h.sync.lastSeq).toBe(2);
    expect(h.sync.doc.getMap('m').toJSON()).toEqual({ one: 1, two: 2, three: 3 });
    expect(h.errors).toEqual([]);
    await h.sync.close();
  });
});

describe('the received position', () => {
  it('a counter gap of another author rewinds to where its last counter arrived, once per gap and connection', async () => {
    const { a, b, docId, key, sealBy } = await setup();
    const h = await open(a, [a, b], createMemoryStore(), docId, key);
    const b1 = sealBy(b, 1, mapUpdate('b1', 1));
    const b2 = sealBy(b, 2, mapUpdate('b2', 2));
    const b3 = sealBy(b, 3, mapUpdate('b3', 3));
    await h.sync.receive([{ seq: 1, env: b1 }]);
    // A relay replays B#1 at seq 2 (a duplicate marks its seq): the honest seq 2 would be skipped.
    await h.sync.receive([{ seq: 2, env: b1 }]);
    expect(h.sync.lastSeq).toBe(2);
    await h.sync.receive([{ seq: 3, env: b3 }]);
    await h.sync.settle();
    expect(h.errors.map((e) => e.code)).toEqual(['COUNTER_GAP']);
    expect(h.refetches).toEqual([1]);
    expect(h.sync.lastSeq).toBe(1);
    // The same gap again on this connection: reported, no second rewind (no loop).
    await h.sync.receive([{ seq: 3, env: b3 }]);
    await h.sync.settle();
    expect(h.refetches).toEqual([1]);
    // The honest log, served again from seq 1.
    await h.sync.receive([
      { seq: 2, env: b2 },
      { seq: 3, env: b3 },
    ]);
    await h.sync.settle();
    expect(h.sync.lastSeq).toBe(3);
    expect(h.sync.doc.getMap('m').toJSON()).toEqual({ b1: 1, b2: 2, b3: 3 });
    // A new connection may answer a new gap again.
    h.sync.resetSynced();
    await h.sync.receive([{ seq: 5, env: sealBy(b, 5, mapUpdate('b', 5)) }]);
    await h.sync.settle();
    expect(h.refetches).toEqual([1, 3]);
    await h.sync.close();
  });

  it('a claim with a relay-chosen seq moves nothing; synced needs every local change proved', async () => {
    const { a, b, docId, key, sealBy } = await setup();
    const h = await open(a, [a, b], createMemoryStore(), docId, key);
    const [mine] = await writeAndSeal(h, 'call', '988');
    h.sync.claim(mine!.counter, 7);
    await h.sync.receive([{ seq: 2, env: sealBy(b, 1, mapUpdate('b', 1)) }]);
    h.sync.markSynced(2);
    await h.sync.settle();
    expect(h.sync.lastSeq).toBe(0);
    expect(h.sync.synced).toBe(false);
    await h.sync.receive([{ seq: 1, env: mine! }]);
    await h.sync.settle();
    expect(h.sync.lastSeq).toBe(2);
    expect(h.sync.synced).toBe(true);
    await h.sync.close();
  });

  it('asks for proof from just below the lowest claimed seq only when everything below it is here', async () => {
    const { a, b, docId, key, sealBy } = await setup();
    const h = await open(a, [a, b], createMemoryStore(), docId, key);
    const [mine] = await writeAndSeal(h, 'call', '988');
    // Seq 1 missing, seq 2 here: a catch-up must start at lastSeq whatever the ack named.
    await h.sync.receive([{ seq: 2, env: sealBy(b, 1, mapUpdate('b1', 1)) }]);
    h.sync.claim(mine!.counter, 3);
    expect(h.sync.proofAfter()).toBe(0);
    await h.sync.receive([{ seq: 1, env: sealBy(b, 1, mapUpdate('b1', 1)) }]);
    await h.sync.withhold([3, 4, 5]);
    h.sync.unclaim([mine!.counter]);
    h.sync.claim(mine!.counter, 6);
    // 1, 2 received, 3..5 withheld: the catch-up starts at 5, not at lastSeq 2.
    expect(h.sync.lastSeq).toBe(2);
    expect(h.sync.proofAfter()).toBe(5);
    // A seq far beyond anything known is not believed.
    h.sync.unclaim([mine!.counter]);
    h.sync.claim(mine!.counter, 1_000_000);
    expect(h.sync.proofAfter()).toBe(2);
    await h.sync.close();
  });

  it('rewindTo never moves forward and forgets what was ahead', () => {
    const meta = newDocMeta('mood', 'today');
    for (const seq of [1, 2, 3, 5, 6]) markSeq(meta, seq);
    rewindTo(meta, 10);
    expect(meta.lastSeq).toBe(3);
    expect(meta.ahead).toEqual([]);
    rewindTo(meta, 1);
    expect(meta.lastSeq).toBe(1);
  });

  it('bounds the seqs kept above lastSeq, received or withheld, whatever seqs a relay names', () => {
    const meta = newDocMeta('mood', 'today');
    for (let seq = 2; seq < MAX_KNOWN_SEQS + 1002; seq++) markSeq(meta, seq);
    expect(meta.ahead.length).toBe(MAX_KNOWN_SEQS);
    expect(meta.ahead[0]).toBe(2);
    markWithheld(meta, Array.from({ length: MAX_KNOWN_SEQS + 500 }, (_, i) => 100_000 + i));
    expect(meta.withheld.length).toBe(MAX_KNOWN_SEQS);
    expect(meta.withheld.at(-1)).toBe(100_000 + MAX_KNOWN_SEQS + 499);
  });
});
