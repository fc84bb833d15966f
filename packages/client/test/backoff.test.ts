import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createBackoff } from '../src/transport/backoff.js';

/** A deterministic uniform [0, 1) source (mulberry32), so two runs can be compared. */
const seededRandom = (seed: number) => {
  let a = seed >>> 0;
  return (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
};

/** Largest double below 1: the top of what a [0, 1) source can return. */
const ALMOST_ONE = 1 - Number.EPSILON / 2;

describe('createBackoff', () => {
  it('keeps every delay in [0, min(max, base·2^attempt)) (property)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5_000 }),
        fc.integer({ min: 1, max: 120_000 }),
        fc.array(fc.double({ min: 0, max: ALMOST_ONE, noNaN: true }), { minLength: 1, maxLength: 40 }),
        (baseMs, maxMs, draws) => {
          let i = 0;
          const backoff = createBackoff({ baseMs, maxMs, random: () => draws[i++ % draws.length]! });
          for (let attempt = 0; attempt < 40; attempt++) {
            expect(backoff.attempt).toBe(attempt);
            const delay = backoff.next();
            expect(Number.isInteger(delay)).toBe(true);
            expect(delay).toBeGreaterThanOrEqual(0);
            expect(delay).toBeLessThan(Math.min(maxMs, baseMs * 2 ** attempt));
          }
        },
      ),
      { seed: 99, numRuns: 300 },
    );
  });

  it('doubles the ceiling each attempt up to the maximum', () => {
    const backoff = createBackoff({ baseMs: 100, maxMs: 1_000, random: () => ALMOST_ONE });
    const delays = Array.from({ length: 7 }, () => backoff.next());
    expect(delays).toEqual([99, 199, 399, 799, 999, 999, 999]);
  });

  it('starts over from the base ceiling after reset', () => {
    const backoff = createBackoff({ baseMs: 100, maxMs: 10_000, random: () => ALMOST_ONE });
    for (let i = 0; i < 5; i++) backoff.next();
    expect(backoff.attempt).toBe(5);
    backoff.reset();
    expect(backoff.attempt).toBe(0);
    expect(backoff.next()).toBe(99);
    expect(backoff.next()).toBe(199);
  });

  it('is deterministic given the same random source', () => {
    const run = (seed: number) => {
      const backoff = createBackoff({ baseMs: 250, maxMs: 15_000, random: seededRandom(seed) });
      return Array.from({ length: 12 }, () => backoff.next());
    };
    expect(run(7)).toEqual(run(7));
    expect(run(7)).not.toEqual(run(8));
  });

  it('defaults to a 250 ms base and a 15 s cap', () => {
    const backoff = createBackoff({ random: () => ALMOST_ONE });
    const delays = Array.from({ length: 10 }, () => backoff.next());
    expect(delays).toEqual([249, 499, 999, 1999, 3999, 7999, 14999, 14999, 14999, 14999]);
  });

  it('stays finite after very many attempts', () => {
    const backoff = createBackoff({ baseMs: 250, maxMs: 15_000, random: () => ALMOST_ONE });
    for (let i = 0; i < 2_000; i++) expect(backoff.next()).toBeLessThan(15_000);
  });
});
