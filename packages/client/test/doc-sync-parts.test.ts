import { type Envelope, WireLimits, sealEnvelope } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { createMemoryStore } from '../src/storage/memory-store.js';
import { createPartsBudget } from '../src/sync/split-updates.js';
import { open, setup } from './doc-harness.js';

/**
 * Split updates are held in memory until their last part. What all documents of a device hold
 * that way is bounded; an author (a stolen device, say) sending parts past the bound gets its
 * update dropped — reported, its seqs left to be fetched again — and an honest update within it
 * still arrives whole.
 */

/** `count` parts of one update by `sealBy`'s author, from counter `first`; each part `size` bytes. */
const partsOf = (setupResult: Awaited<ReturnType<typeof setup>>, who: Parameters<Awaited<ReturnType<typeof setup>>['sealBy']>[0], update: Uint8Array, count: number, first = 1): Envelope[] => {
  const size = Math.ceil(update.length / count);
  return Array.from({ length: count }, (_, index) =>
    sealEnvelope(
      { doc: setupResult.docId, kind: 'update', epoch: 0, device: who.device.deviceId, counter: first + index, lane: setupResult.lane, part: { index, count } },
      update.subarray(index * size, (index + 1) * size),
      { key: setupResult.key, signingKey: who.device.secretKey },
    ),
  );
};

/** A Yjs update of about `bytes` bytes (one string in a map). */
const bigUpdate = (bytes: number, tag: string): Uint8Array => {
  const doc = new Y.Doc();
  doc.getMap('m').set(tag, 'x'.repeat(bytes));
  return Y.encodeStateAsUpdate(doc);
};

describe('split updates held until their last part', () => {
  it('past the budget the update is dropped, reported, its seqs unmarked and the budget given back; one within it arrives whole', async () => {
    const s = await setup();
    const budget = createPartsBudget(256 * 1024);
    const h = await open(s.a, [s.a, s.b], createMemoryStore(), s.docId, s.key, 'safety_plan', budget);
    // 400 KiB in 8 parts of 50 KiB: the sixth part does not fit a 256 KiB budget.
    const tooBig = partsOf(s, s.b, bigUpdate(400 * 1024, 'big'), 8);
    await h.sync.receive(tooBig.slice(0, 7).map((env, i) => ({ seq: i + 1, env })));
    expect(h.errors.map((e) => e.code)).toEqual(['LIMIT_EXCEEDED']);
    expect(budget.held).toBeLessThan(256 * 1024);
    expect(h.sync.lastSeq).toBe(0);
    expect(h.sync.doc.getMap('m').has('big')).toBe(false);

    // The rest of the frame (part 8) starts nothing: its update is gone. The budget is free again
    // once the document lets go of it (here: another update of that author starts over).
    const fits = partsOf(s, s.b, bigUpdate(120 * 1024, 'fits'), 3);
    await h.sync.receive(fits.map((env, i) => ({ seq: i + 1, env })));
    await h.sync.settle();
    expect(h.sync.doc.getMap('m').get('fits')).toHaveLength(120 * 1024);
    expect(h.sync.lastSeq).toBe(3);
    expect(budget.held).toBe(0);
    await h.sync.close();
  });

  it('a device seals no update larger than WireLimits.maxUpdateBytes: pending changes past it go out as several updates', async () => {
    const s = await setup();
    const h = await open(s.a, [s.a, s.b], createMemoryStore(), s.docId, s.key);
    // Three pending changes of 24 MiB each: the first two fit one 64 MiB update, the third waits for the next.
    for (const tag of ['one', 'two', 'three']) {
      h.sync.doc.getMap('m').set(tag, 'y'.repeat(24 * 1024 * 1024));
      await h.sync.settle();
    }
    const first = await h.sync.seal(s.lane);
    const second = await h.sync.seal(s.lane);
    // The harness seals parts of 1 MiB of plaintext: an update's part count is its size in MiB, rounded up.
    const mib = (envs: Envelope[]) => envs[0]?.part?.count ?? envs.length;
    expect(mib(first)).toBeLessThanOrEqual(WireLimits.maxUpdateBytes / 2 ** 20);
    expect(mib(first)).toBeGreaterThanOrEqual(48);
    expect(mib(second)).toBeGreaterThanOrEqual(24);
    expect(first).toHaveLength(mib(first));
    expect(h.sync.hasPending).toBe(false);
    expect(h.errors).toEqual([]);
    await h.sync.close();
  });
});
