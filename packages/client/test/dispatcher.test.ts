import { type DocId, type Envelope, ErrorCode, createScheduler, DEFAULT_TIERS } from '@keel/engine';
import { afterEach, describe, expect, it } from 'vitest';
import { createMemoryStore } from '../src/storage/memory-store.js';
import { Dispatcher, MAX_DEFERRAL_MS } from '../src/sync/dispatcher.js';
import type { DocSync } from '../src/sync/doc-sync.js';
import { open, setup, writeAndSeal } from './doc-harness.js';

/**
 * What the dispatcher does with the relay's refusals: a counter gap is answered by one resend,
 * a crisis document's deferral ends at the next reconnect, others' are capped. Real DocSyncs and
 * scheduler; the clock is the test's, and every push is recorded instead of sent.
 */

const WEEK_MS = 7 * 24 * 3600 * 1000;
const closers: (() => unknown)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

const harness = async (docs: readonly DocSync[]) => {
  let now = 1_000_000;
  let ready = true;
  const pushed: Envelope[] = [];
  const byId = new Map<DocId, DocSync>(docs.map((d) => [d.docId, d]));
  const dispatcher = new Dispatcher({
    scheduler: createScheduler({ clock: { now: () => now }, policy: DEFAULT_TIERS.premium }),
    doc: (id) => byId.get(id),
    docs: () => byId.values(),
    push: (envs) => {
      pushed.push(...envs);
      return true;
    },
    maxFrameChars: () => 1 << 20,
    linkReady: () => ready,
    now: () => now,
    onError: (error) => {
      throw error;
    },
  });
  closers.push(() => dispatcher.close());
  return {
    dispatcher,
    pushed,
    advance: (ms: number) => (now += ms),
    setReady: (r: boolean) => (ready = r),
  };
};

const sealedDoc = async (docClass: 'safety_plan' | 'mood', writes: number) => {
  const { a, b, docId, key } = await setup(docClass);
  const h = await open(a, [a, b], createMemoryStore(), docId, key, docClass);
  closers.push(() => h.sync.close());
  for (let i = 0; i < writes; i++) await writeAndSeal(h, `k${i}`, i);
  return h.sync;
};

describe('dispatcher: refusals', () => {
  it('answers COUNTER_GAP by resending the unproved envelopes in counter order, once per counter and connection', async () => {
    const sync = await sealedDoc('mood', 3);
    const d = await harness([sync]);
    d.dispatcher.onReject(sync.docId, 3, ErrorCode.COUNTER_GAP, undefined);
    expect(d.pushed.map((e) => e.counter)).toEqual([1, 2, 3]);
    // The same gap again, or one for a counter already resent: nothing (no loop).
    d.dispatcher.onReject(sync.docId, 3, ErrorCode.COUNTER_GAP, undefined);
    d.dispatcher.onReject(sync.docId, 1, ErrorCode.COUNTER_GAP, undefined);
    expect(d.pushed.map((e) => e.counter)).toEqual([1, 2, 3]);
    // A new connection resends everything unproved, and may answer a gap again.
    d.dispatcher.onLinkDown();
    d.dispatcher.onLinkReady();
    d.dispatcher.onReject(sync.docId, 2, ErrorCode.COUNTER_GAP, undefined);
    expect(d.pushed.map((e) => e.counter)).toEqual([1, 2, 3, 1, 2, 3, 1, 2, 3]);
  });

  it('holds a crisis document deferred for a week only until the next reconnect, which resends it first', async () => {
    const crisis = await sealedDoc('safety_plan', 1);
    const mood = await sealedDoc('mood', 1);
    const d = await harness([mood, crisis]);
    d.dispatcher.onReject(crisis.docId, 1, ErrorCode.QUOTA_EXCEEDED, WEEK_MS);
    d.dispatcher.resend([crisis]);
    expect(d.pushed).toEqual([]);
    d.setReady(false);
    d.dispatcher.onLinkDown();
    d.setReady(true);
    d.dispatcher.onLinkReady();
    expect(d.pushed.map((e) => e.doc)).toEqual([crisis.docId, mood.docId]);
  });

  it('honours a non-crisis deferral for an hour at most, across a reconnect', async () => {
    const mood = await sealedDoc('mood', 1);
    const d = await harness([mood]);
    d.dispatcher.onReject(mood.docId, 1, ErrorCode.QUOTA_EXCEEDED, WEEK_MS);
    d.dispatcher.onLinkDown();
    d.dispatcher.onLinkReady();
    expect(d.pushed).toEqual([]);
    d.advance(MAX_DEFERRAL_MS + 1);
    d.dispatcher.resend([mood]);
    expect(d.pushed.map((e) => e.counter)).toEqual([1]);
  });

  it('ignores refusals naming documents that are not open', async () => {
    const mood = await sealedDoc('mood', 1);
    const d = await harness([mood]);
    for (let i = 0; i < 1000; i++) d.dispatcher.onReject(`doc-${i}` as DocId, 1, ErrorCode.QUOTA_EXCEEDED, WEEK_MS);
    d.dispatcher.onLinkDown();
    d.dispatcher.onLinkReady();
    expect(d.pushed.map((e) => e.doc)).toEqual([mood.docId]);
  });
});
