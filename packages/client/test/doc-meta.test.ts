import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DocMetaSchema, markSeq, newDocMeta } from '../src/sync/doc-meta.js';

/** Seqs 1..n in a random order, some delivered twice (a replay after reconnect). */
const deliveries = fc
  .integer({ min: 0, max: 60 })
  .chain((n) =>
    fc.tuple(
      fc.constant(n),
      fc.shuffledSubarray(
        Array.from({ length: n }, (_, i) => i + 1),
        { minLength: n, maxLength: n },
      ),
      fc.array(fc.integer({ min: 1, max: Math.max(1, n) }), { maxLength: Math.min(n, 15) }),
      fc.array(fc.nat(), { maxLength: 15 }),
    ),
  )
  .map(([n, order, replays, positions]) => {
    const seqs = [...order];
    // Replays of seqs in 1..n, inserted at arbitrary points (before or after the original).
    replays.forEach((seq, i) => seqs.splice((positions[i] ?? i) % (seqs.length + 1), 0, seq));
    return { n, seqs: n === 0 ? [] : seqs };
  });

describe('markSeq', () => {
  it('advances lastSeq over exactly the contiguous prefix of marked seqs (property)', () => {
    fc.assert(
      fc.property(deliveries, ({ n, seqs }) => {
        const meta = newDocMeta('mood', 'today');
        const marked = new Set<number>();
        for (const seq of seqs) {
          markSeq(meta, seq);
          marked.add(seq);
          let k = 0;
          while (marked.has(k + 1)) k++;
          expect(meta.lastSeq).toBe(k);
          // Everything known beyond the prefix is remembered once, sorted, none at or below lastSeq.
          expect(meta.ahead).toEqual([...marked].filter((s) => s > k).sort((a, b) => a - b));
        }
        expect(meta.lastSeq).toBe(n);
        expect(meta.ahead).toEqual([]);
        expect(DocMetaSchema.safeParse(meta).success).toBe(true);
      }),
      { seed: 4242, numRuns: 300 },
    );
  });

  it('holds lastSeq at a gap until the gap is filled', () => {
    const meta = newDocMeta('mood', 'today');
    for (const seq of [1, 2, 4, 5, 7]) markSeq(meta, seq);
    expect(meta.lastSeq).toBe(2);
    expect(meta.ahead).toEqual([4, 5, 7]);
    markSeq(meta, 3);
    expect(meta.lastSeq).toBe(5);
    expect(meta.ahead).toEqual([7]);
    markSeq(meta, 2);
    markSeq(meta, 7);
    expect(meta.ahead).toEqual([7]);
  });
});
