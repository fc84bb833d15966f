import { type ClientStatus, createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { type ClientFrame, type DocId, type Envelope, ErrorCode, type RelayFrame, type Seq, encodeFrame } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { acrossTheMiddle, startMaliciousRelay } from '../support/malicious-relay.js';
import { type FrameOf, connectRawDevice, docRef, mapUpdate, sealFor } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/**
 * Step 6, findings 3, 4 and 5: an acknowledgment is the relay's claim, not a fact. A real device
 * (createNodeClient, real keys) talks to the real relay process through the man in the middle of
 * test/support/malicious-relay.ts, which fakes acks, replays envelopes at other seqs and defers
 * crisis pushes for a week; another device of the user talks to the relay directly and must get
 * every change once the path is honest.
 */

const scope = useTestScope();
const MOOD = { class: 'mood', name: 'today' } as const;
const PLAN = { class: 'safety_plan', name: 'main' } as const;
const WEEK_MS = 7 * 24 * 3600 * 1000;

/** The push frames (of `doc`) a device sent through the man in the middle, over every connection. */
const pushesOf = (frames: readonly ClientFrame[][], doc: DocId): Envelope[] =>
  frames.flat().flatMap((f) => (f.type === 'push' ? f.envs.filter((e) => e.doc === doc && e.kind === 'update') : []));

/** Waits until `count()` has not changed for `quietMs`; fails after `timeoutMs` (a loop never goes quiet). */
const quiet = async (count: () => number, quietMs: number, timeoutMs: number): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  let last = count();
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    if (Date.now() > deadline) throw new Error(`still sending after ${timeoutMs} ms: a resend loop`);
    await new Promise((resolve) => setTimeout(resolve, 20));
    if (count() !== last) {
      last = count();
      since = Date.now();
    }
  }
};

describe('the relay re-serves on a second sub', () => {
  it('a sub of a document already subscribed on the connection is answered again from its `after`, own entries included', async () => {
    const relay = await scope.relay();
    const identity = await createIdentity();
    const raw = await connectRawDevice(relay.url, identity);
    scope.defer(() => raw.close());
    const doc = docRef(identity, 'mood', 'today');
    raw.sendFrame({ type: 'sub', docs: [{ doc: doc.id, after: 0 }] });
    await raw.nextOf('synced');
    raw.sendFrame({ type: 'push', envs: [sealFor(identity, doc, 1, mapUpdate('k', 1))] });
    const ack = await raw.nextOf('ack');
    expect(ack.acks[0]?.seq).toBe(1);
    // Live, the relay never sends a device its own entries back: the proof is a second sub.
    for (let round = 0; round < 2; round++) {
      raw.sendFrame({ type: 'sub', docs: [{ doc: doc.id, after: 0 }] });
      const updates = await raw.nextOf('updates');
      expect(updates.items.map((i) => ('env' in i ? [i.seq, i.env.device, i.env.counter] : i))).toEqual([[1, identity.device.deviceId, 1]]);
      expect((await raw.nextOf('synced')).seq).toBe(1);
    }
  });

  it('a sub with `proof` answers the author’s own entries as stubs (counter, signature) and only to the author; without `proof` they come whole', async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const idB = await linkNewDevice(idA);
    const rawA = await connectRawDevice(relay.url, idA);
    scope.defer(() => rawA.close());
    const rawB = await connectRawDevice(relay.url, idB);
    scope.defer(() => rawB.close());
    const doc = docRef(idA, 'mood', 'today');
    // Not subscribed yet: nothing arrives live, every frame below answers a sub.
    const a1 = sealFor(idA, doc, 1, mapUpdate('a', 1));
    const b1 = sealFor(idB, doc, 1, mapUpdate('b', 1));
    const a2 = sealFor(idA, doc, 2, mapUpdate('long', 'x'.repeat(20_000)));
    rawA.sendFrame({ type: 'push', envs: [a1] });
    expect((await rawA.nextOf('ack')).acks[0]?.seq).toBe(1);
    rawB.sendFrame({ type: 'push', envs: [b1] });
    expect((await rawB.nextOf('ack')).acks[0]?.seq).toBe(2);
    rawA.sendFrame({ type: 'push', envs: [a2] });
    expect((await rawA.nextOf('ack')).acks[0]?.seq).toBe(3);

    const catchUp = async (raw: typeof rawA, proof: boolean) => {
      raw.sendFrame({ type: 'sub', docs: [{ doc: doc.id, after: 0, ...(proof ? { proof: true } : {}) }] });
      const items = [];
      for (;;) {
        const frame = await raw.next((f) => (f.type === 'updates' || f.type === 'synced') && f.doc === doc.id);
        if (frame.type === 'synced') return { items, seq: frame.seq };
        if (frame.type === 'updates') items.push(...frame.items);
      }
    };
    // A's proof: its own entries as stubs — the 20 KB one too — B's whole, in seq order.
    const proofA = await catchUp(rawA, true);
    expect(proofA.items).toEqual([
      { seq: 1, own: { counter: 1, sig: a1.sig } },
      { seq: 2, env: b1 },
      { seq: 3, own: { counter: 2, sig: a2.sig } },
    ]);
    expect(proofA.seq).toBe(3);
    // B's proof: only B's entry is a stub; A's come whole to B.
    const proofB = await catchUp(rawB, true);
    expect(proofB.items).toEqual([
      { seq: 1, env: a1 },
      { seq: 2, own: { counter: 1, sig: b1.sig } },
      { seq: 3, env: a2 },
    ]);
    // Without proof (a device rebuilding its content), A gets its own envelopes whole.
    const fullA = await catchUp(rawA, false);
    expect(fullA.items).toEqual([
      { seq: 1, env: a1 },
      { seq: 2, env: b1 },
      { seq: 3, env: a2 },
    ]);
    // Live after a proof catch-up: an entry A's other connection commits comes whole (this one
    // may not hold it).
    const rawA2 = await connectRawDevice(relay.url, idA);
    scope.defer(() => rawA2.close());
    await catchUp(rawA, true);
    const a3 = sealFor(idA, doc, 3, mapUpdate('a', 3));
    rawA2.sendFrame({ type: 'push', envs: [a3] });
    expect((await rawA2.nextOf('ack')).acks[0]?.seq).toBe(4);
    expect((await rawA.nextOf('updates')).items).toEqual([{ seq: 4, env: a3 }]);
    expect([...rawA.invalid, ...rawB.invalid, ...rawA2.invalid]).toEqual([]);
  });

  it('a proof catch-up packs its frames by the stubs’ size: 300 envelopes of 1.5 KB are proved in one frame of ~125 B each', async () => {
    const relay = await scope.relay();
    const identity = await createIdentity();
    const raw = await connectRawDevice(relay.url, identity);
    scope.defer(() => raw.close());
    const doc = docRef(identity, 'mood', 'today');
    const envs = Array.from({ length: 300 }, (_, i) => sealFor(identity, doc, i + 1, mapUpdate(`k${i}`, 'x'.repeat(1_500))));
    for (let i = 0; i < envs.length; i += 100) raw.sendFrame({ type: 'push', envs: envs.slice(i, i + 100) });
    for (let acked = 0; acked < envs.length; ) acked += (await raw.nextOf('ack')).acks.length;
    const catchUp = async (proof: boolean) => {
      raw.sendFrame({ type: 'sub', docs: [{ doc: doc.id, after: 0, ...(proof ? { proof: true } : {}) }] });
      const frames: FrameOf<'updates'>[] = [];
      for (;;) {
        const frame = await raw.next((f) => (f.type === 'updates' || f.type === 'synced') && f.doc === doc.id);
        if (frame.type === 'synced') return frames;
        if (frame.type === 'updates') frames.push(frame);
      }
    };
    const proof = await catchUp(true);
    expect(proof.map((f) => f.items.length)).toEqual([300]);
    expect(proof[0]!.items.every((i) => 'own' in i)).toBe(true);
    expect(encodeFrame(proof[0]!).length).toBeLessThan(300 * 130 + 200);
    // The same entries whole are cut into frames of about 192 KiB of ciphertext each.
    const whole = await catchUp(false);
    expect(whole.length).toBeGreaterThanOrEqual(3);
    expect(whole.flatMap((f) => f.items).length).toBe(300);
  });
});

describe('finding 3: fake acknowledgments', () => {
  it('a push acked and dropped by the relay in the middle still reaches the other device, and later writes flow', async () => {
    const { mitm, a, b, docA, docB, doc } = await acrossTheMiddle(scope, MOOD);
    await a.client.whenSynced();

    // The first push of the document is acknowledged (at a seq of the relay's choosing) and dropped.
    let dropped = 0;
    mitm.interceptDevice((frame) => {
      if (frame.type !== 'push' || dropped > 0 || !frame.envs.some((e) => e.doc === doc)) return undefined;
      dropped++;
      mitm.toDevice({ type: 'ack', acks: frame.envs.map((e) => ({ doc, counter: e.counter, seq: 1 as Seq })) });
      return [];
    });
    docA.getMap('m').set('first', 1);
    // The acked change is not taken for delivered: the device finds it missing and sends it again.
    await waitFor(() => docB.getMap('m').get('first') === 1, 5_000, 'the falsely acked change at B');
    docA.getMap('m').set('second', 2);
    await waitFor(() => docB.getMap('m').get('second') === 2, 5_000, 'the next write at B');
    await a.client.whenSynced();
    expect(a.client.unconfirmed).toBe(0);
    expect(dropped).toBe(1);
    expect([...a.errors, ...b.errors].filter((e) => e.code !== ErrorCode.COUNTER_GAP)).toEqual([]);
  });

  it('changes acked falsely on every push survive a restart and reach the other device once the path is honest', async () => {
    const real = await scope.relay();
    const mitm = await startMaliciousRelay({ mode: 'mitm', upstream: real.url });
    scope.defer(() => mitm.close());
    const idA = await createIdentity();
    const storeA = createMemoryStore();
    const first = await scope.device(mitm.url, idA, storeA);
    const b = await scope.device(real.url, await linkNewDevice(idA));
    const docB = await b.client.open(MOOD);
    const docA = await first.client.open(MOOD);
    const doc = first.client.docId(MOOD);
    await mitm.ready(1);
    await first.client.whenSynced();

    // Every push of the document: acked, never forwarded.
    let lying = true;
    mitm.interceptDevice((frame) => {
      if (!lying || frame.type !== 'push' || !frame.envs.some((e) => e.doc === doc)) return undefined;
      mitm.toDevice({ type: 'ack', acks: frame.envs.map((e) => ({ doc, counter: e.counter, seq: 1 as Seq })) });
      return [];
    });
    const statuses: ClientStatus[] = [];
    first.client.on('status', (s) => statuses.push(s));
    docA.getMap('m').set('one', 1);
    await waitFor(() => pushesOf(mitm.fromDevices, doc).length >= 2, 5_000, 'the unproved change resent once');
    docA.getMap('m').set('two', 2);
    await waitFor(() => pushesOf(mitm.fromDevices, doc).length >= 4, 5_000, 'the second change resent once');
    // Bounded: each change is pushed, found unproved, resent once — and no more on this connection
    // (the device goes quiet: no frame for 300 ms, within 5 s).
    await quiet(() => mitm.fromDevices.flat().length, 300, 5_000);
    expect(pushesOf(mitm.fromDevices, doc).map((e) => e.counter)).toEqual([1, 1, 2, 2]);
    // Proof asked for at most twice per change (after the push, after the resend), plus the first sub.
    expect(mitm.fromDevices.flat().filter((f) => f.type === 'sub').length).toBeLessThanOrEqual(1 + 2 * 2);
    expect(first.client.unconfirmed).toBe(2);
    expect(first.client.status).toBe('connected');
    expect(statuses).not.toContain('synced');
    expect(docB.getMap('m').size).toBe(0);
    await first.client.close();

    // A restart on the same storage, the path honest now: both changes arrive, and writes go on.
    lying = false;
    const again = await scope.device(mitm.url, idA, storeA);
    const docA2 = await again.client.open(MOOD);
    expect(again.client.unconfirmed).toBe(2);
    await waitFor(() => docB.getMap('m').get('one') === 1 && docB.getMap('m').get('two') === 2, 5_000, 'both changes at B');
    docA2.getMap('m').set('three', 3);
    await waitFor(() => docB.getMap('m').get('three') === 3, 5_000, 'a later write at B');
    await again.client.whenSynced();
    expect(again.client.unconfirmed).toBe(0);
    expect([...again.errors, ...b.errors]).toEqual([]);
  });

  it('a push the relay in the middle acks, echoes back as if logged, and drops: the honest relay’s COUNTER_GAP names the counter it expects, and the device refills it from the document', async () => {
    const { mitm, a, b, docA, docB, doc } = await acrossTheMiddle(scope, PLAN);
    await a.client.whenSynced();

    // The first two pushes of the document: acked, then echoed back in `updates` at the acked seq
    // (the forged proof a malicious relay can always make, since it holds the envelope), never forwarded.
    let forged = 0;
    mitm.interceptDevice((frame) => {
      if (forged >= 2 || frame.type !== 'push' || !frame.envs.some((e) => e.doc === doc)) return undefined;
      forged++;
      const items = frame.envs.map((env, i) => ({ seq: (forged * 10 + i) as Seq, env }));
      mitm.toDevice({ type: 'ack', acks: items.map(({ seq, env }) => ({ doc, counter: env.counter, seq })) });
      mitm.toDevice({ type: 'updates', doc, items });
      return [];
    });
    docA.getMap('plan').set('call', '988');
    await a.client.flush();
    docA.getMap('plan').set('walk', 'park');
    await a.client.flush();
    // The device believed both (its outbox let them go): nothing of them is at the relay or at B.
    expect(forged).toBe(2);
    expect(a.client.unconfirmed).toBe(0);
    expect(docB.getMap('plan').size).toBe(0);

    // The path is honest again. The next write is counter 3; the relay expects 1 and says so;
    // the device fills 1–3 and reseals the whole document after them.
    docA.getMap('plan').set('text', 'my sister');
    await waitFor(
      () => docB.getMap('plan').get('call') === '988' && docB.getMap('plan').get('walk') === 'park' && docB.getMap('plan').get('text') === 'my sister',
      5_000,
      'every change at B',
    );
    docA.getMap('plan').set('later', 'flows');
    await waitFor(() => docB.getMap('plan').get('later') === 'flows', 5_000, 'a later write at B');
    await a.client.whenSynced();
    expect(a.client.unconfirmed).toBe(0);
    // Reported, bounded: a counter-3 push that was already on its way may be refused a second
    // time; the refill happens once, and the counters go out in order after it.
    expect(a.errors.length).toBeGreaterThanOrEqual(1);
    expect(a.errors.every((e) => e.code === ErrorCode.COUNTER_GAP && e.message.includes('(expected 1)'))).toBe(true);
    const counters = pushesOf(mitm.fromDevices, doc).map((e) => e.counter);
    expect(counters.length).toBeLessThanOrEqual(10);
    expect(counters.slice(counters.lastIndexOf(1))).toEqual([1, 2, 3, 4, 5]);
    expect(b.errors).toEqual([]);
  });
});

describe('finding 4: seq poisoning', () => {
  it('an old envelope replayed at a later seq, and an ack naming a seq of the relay’s choosing, block none of the other device’s later updates', async () => {
    const { mitm, a, b, docA, docB, doc } = await acrossTheMiddle(scope, MOOD);
    await Promise.all([a.client.whenSynced(), b.client.whenSynced()]);

    docB.getMap('m').set('b1', 1);
    await waitFor(() => docA.getMap('m').get('b1') === 1, 5_000, 'B#1 at A');
    const delivered = mitm.toDevices.flatMap((f) => (f.type === 'updates' && f.doc === doc ? f.items : [])).flatMap((i) => ('env' in i ? [i] : []));
    const old = delivered.find((i) => i.env.device === b.client.identity.device.deviceId)!;
    // The relay in the middle replays B#1 at the next seqs, where B's next updates will be...
    mitm.toDevice({ type: 'updates', doc, items: [2, 3, 4].map((seq) => ({ seq: seq as Seq, env: old.env })) });
    // ...and acknowledges A's own write at a seq further on.
    mitm.interceptRelay((frame: RelayFrame) =>
      frame.type === 'ack' ? [{ ...frame, acks: frame.acks.map((ack) => ({ ...ack, seq: (ack.seq + 3) as Seq })) }] : undefined,
    );
    docA.getMap('m').set('a1', 1);
    await waitFor(() => mitm.toDevices.some((f) => f.type === 'ack'), 5_000, 'the shifted ack');
    mitm.interceptRelay(undefined);

    // Honest from here: every later update of B arrives.
    for (let i = 2; i <= 6; i++) {
      docB.getMap('m').set(`b${i}`, i);
      await b.client.flush();
    }
    await waitFor(() => [2, 3, 4, 5, 6].every((i) => docA.getMap('m').get(`b${i}`) === i), 5_000, 'B’s later updates at A');
    await waitFor(() => docB.getMap('m').get('a1') === 1, 5_000, 'A’s write at B');
    await a.client.whenSynced();
    expect(a.client.unconfirmed).toBe(0);
    // What A reported: the counter gap that showed the poisoned seq, nothing forged applied.
    expect(new Set(a.errors.map((e) => e.code))).toEqual(new Set([ErrorCode.COUNTER_GAP]));
  });
});

describe('finding 5: crisis data held back by a forged deferral', () => {
  it('a crisis push deferred for seven days reaches the other device on the first honest reconnect; status never says synced meanwhile', async () => {
    const { mitm, a, docA, docB, doc } = await acrossTheMiddle(scope, PLAN);
    await a.client.whenSynced();

    let deferring = true;
    mitm.interceptDevice((frame) => {
      if (!deferring || frame.type !== 'push' || !frame.envs.some((e) => e.doc === doc)) return undefined;
      const counter = frame.envs.find((e) => e.doc === doc)!.counter;
      mitm.toDevice({ type: 'reject', doc, counter, code: ErrorCode.QUOTA_EXCEEDED, message: 'come back next week', retryAfterMs: WEEK_MS });
      return [];
    });
    const statuses: ClientStatus[] = [];
    a.client.on('status', (s) => statuses.push(s));
    const deferred: number[] = [];
    a.client.on('deferred', (d) => deferred.push(d.retryAfterMs));
    docA.getMap('plan').set('call', '988');
    await waitFor(() => deferred.length > 0, 5_000, 'the forged deferral');
    expect(a.client.unconfirmed).toBe(1);
    expect(a.client.status).toBe('connected');

    // The path turns honest and the connection drops: the first reconnect sends the crisis edit.
    deferring = false;
    const sessions = mitm.sessions;
    mitm.dropDevices();
    await mitm.ready(sessions + 1);
    await waitFor(() => docB.getMap('plan').get('call') === '988', 5_000, 'the crisis edit at B');
    await a.client.whenSynced();
    expect(a.client.unconfirmed).toBe(0);
    // "synced" first came after the crisis edit reached the log, never while it sat on A.
    expect(statuses.slice(0, statuses.indexOf('synced'))).not.toContain('synced');
    expect(deferred).toEqual([WEEK_MS]);
  });
});

describe('what proof costs', () => {
  /**
   * Before stubs (the proof was the device's own envelope, whole): one edit at a time 833 B per
   * envelope down, 124% of the upload; a burst 751 B, 99%. With stubs: 291 B (43%) and 130 B
   * (9–15%: how many envelopes a burst makes varies with timing). A stub is ~125 B; what is left
   * per proof request is the `updates` frame around it (~85 B, most of it the doc id) and the
   * `synced` that ends every catch-up (~80 B). A burst shares those; single flushed edits pay
   * them each time, so they stay above a quarter of their upload (~675 B per envelope).
   */
  it('measures the bytes downloaded per upload to prove it (printed)', async () => {
    const real = await scope.relay();
    const mitm = await startMaliciousRelay({ mode: 'mitm', upstream: real.url });
    scope.defer(() => mitm.close());
    const idA = await createIdentity();
    const a = await scope.device(mitm.url, idA);
    const docA = await a.client.open(MOOD);
    const doc = a.client.docId(MOOD);
    await mitm.ready(1);
    await a.client.whenSynced();
    const measure = async (label: string, write: () => Promise<void>) => {
      const up0 = mitm.fromDevices.flat().length;
      const down0 = mitm.toDevices.length;
      await write();
      await a.client.whenSynced();
      const up = mitm.fromDevices.flat().slice(up0);
      const down = mitm.toDevices.slice(down0);
      const pushes = up.filter((f) => f.type === 'push');
      const pushBytes = pushes.reduce((n, f) => n + encodeFrame(f).length, 0);
      const ackBytes = down.filter((f) => f.type === 'ack').reduce((n, f) => n + encodeFrame(f).length, 0);
      // What proof adds: the subs asking for it, and the catch-up answering them (own envelopes + synced).
      const subBytes = up.filter((f) => f.type === 'sub').reduce((n, f) => n + encodeFrame(f).length, 0);
      const proofBytes = down.filter((f) => (f.type === 'updates' && f.doc === doc) || f.type === 'synced').reduce((n, f) => n + encodeFrame(f).length, 0);
      const envs = pushes.reduce((n, f) => n + (f.type === 'push' ? f.envs.length : 0), 0);
      const proofItems = down.flatMap((f) => (f.type === 'updates' && f.doc === doc ? f.items : []));
      const stubs = proofItems.filter((i) => 'own' in i).length;
      // None of the device's own ciphertext comes back.
      expect(proofItems.filter((i) => 'env' in i && i.env.device === idA.device.deviceId)).toEqual([]);
      console.log(
        `[proof cost] ${label}: ${envs} envelopes, pushed ${pushBytes} B (acks ${ackBytes} B); proof: +${proofBytes} B down (${(proofBytes / envs).toFixed(0)} B/envelope, ${((100 * proofBytes) / pushBytes).toFixed(0)}% of upload; ${stubs} stubs), +${subBytes} B up`,
      );
      return { pushBytes, proofBytes, envs, stubs };
    };
    const single = await measure('one edit at a time (flush each)', async () => {
      for (let i = 0; i < 50; i++) {
        docA.getMap('m').set(`k${i}`, 'x'.repeat(200));
        await a.client.flush();
      }
    });
    const burst = await measure('a burst of 200 edits', async () => {
      for (let i = 0; i < 200; i++) {
        docA.getMap('m').set(`b${i}`, 'y'.repeat(200));
        await new Promise((resolve) => setImmediate(resolve));
      }
    });
    // Every envelope is proved by one stub (none twice, none by its ciphertext).
    expect(single.stubs).toBe(single.envs);
    expect(burst.stubs).toBe(burst.envs);
    // A burst costs about a stub per envelope; a single edit a stub plus one request's framing.
    expect(burst.proofBytes / burst.envs).toBeLessThan(160);
    expect(burst.proofBytes).toBeLessThan(0.25 * burst.pushBytes);
    expect(single.proofBytes / single.envs).toBeLessThan(320);
    expect(single.proofBytes).toBeLessThan(0.5 * single.pushBytes);
  });
});
