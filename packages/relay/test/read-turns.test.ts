import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ReadTurns } from '../src/server/read-turns.js';

/** Turns stepped by hand: `step()` runs what was scheduled for the next turn. */
const turns = () => {
  let next: (() => void) | undefined;
  return {
    nextTurn: (fn: () => void) => {
      if (next) throw new Error('one turn scheduled at a time');
      next = fn;
      return { cancel: () => void (next = undefined) };
    },
    get scheduled(): boolean {
      return next !== undefined;
    },
    step(): void {
      const fn = next;
      next = undefined;
      fn?.();
    },
  };
};

const holds = () => {
  const h = { held: 0, holds: 0, hold: () => void (h.held++, h.holds++), release: () => void h.held-- };
  return h;
};

const frame = (id: number, length: number) => ({ id, length });

describe('read turns', () => {
  it('reads small frames at once; past the turn’s bytes they wait, the socket held, and go on in order next turn', () => {
    const clock = turns();
    const reading = holds();
    const read: number[] = [];
    const r = new ReadTurns<{ id: number; length: number }>(reading, (f) => read.push(f.id), { bytesPerTurn: 100, nextTurn: clock.nextTurn });

    r.offer(frame(1, 30));
    r.offer(frame(2, 30));
    r.offer(frame(3, 30));
    expect(read).toEqual([1, 2, 3]);
    expect(reading.held).toBe(0);
    // 90 bytes read: one more fits (the turn's bytes are spent after it), then they wait.
    r.offer(frame(4, 30));
    r.offer(frame(5, 30));
    r.offer(frame(6, 500));
    expect(read).toEqual([1, 2, 3, 4]);
    expect(r.waiting).toBe(2);
    expect(reading.held).toBe(1);

    clock.step();
    // A new turn: 30 bytes, then the 500-byte frame (the budget is not spent yet), then stop.
    expect(read).toEqual([1, 2, 3, 4, 5, 6]);
    expect(r.waiting).toBe(0);
    expect(reading.held).toBe(0);
    expect(reading.holds).toBe(1);

    // Frames arriving while earlier ones wait queue behind them, whatever the budget.
    r.offer(frame(7, 10));
    expect(read).toEqual([1, 2, 3, 4, 5, 6]);
    clock.step();
    expect(read).toEqual([1, 2, 3, 4, 5, 6, 7]);
    clock.step();
    expect(clock.scheduled).toBe(false);
  });

  it('a frame larger than the budget is read alone in its turn', () => {
    const clock = turns();
    const reading = holds();
    const read: number[] = [];
    const r = new ReadTurns<{ id: number; length: number }>(reading, (f) => read.push(f.id), { bytesPerTurn: 100, nextTurn: clock.nextTurn });
    for (let id = 1; id <= 3; id++) r.offer(frame(id, 1_000));
    expect(read).toEqual([1]);
    clock.step();
    expect(read).toEqual([1, 2]);
    clock.step();
    expect(read).toEqual([1, 2, 3]);
    expect(reading.held).toBe(0);
  });

  it('closing drops what waits and reads nothing more; a close from inside a read stops the turn', () => {
    const clock = turns();
    const reading = holds();
    const read: number[] = [];
    let r: ReadTurns<{ id: number; length: number }>;
    r = new ReadTurns(
      reading,
      (f) => {
        read.push(f.id);
        if (f.id === 3) r.close();
      },
      { bytesPerTurn: 10, nextTurn: clock.nextTurn },
    );
    for (let id = 1; id <= 5; id++) r.offer(frame(id, 10));
    expect(read).toEqual([1]);
    clock.step();
    clock.step();
    expect(read).toEqual([1, 2, 3]);
    expect(r.waiting).toBe(0);
    r.offer(frame(6, 1));
    clock.step();
    expect(read).toEqual([1, 2, 3]);
    expect(clock.scheduled).toBe(false);
  });

  it('property: every frame is read once, in order; no turn reads more than its budget past its first frame; the socket is read again once nothing waits', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5_000 }),
        fc.array(fc.oneof(fc.record({ length: fc.integer({ min: 1, max: 8_000 }) }), fc.constant('turn' as const)), { maxLength: 200 }),
        (budget, script) => {
          const clock = turns();
          const reading = holds();
          const read: { id: number; turn: number; length: number }[] = [];
          let turn = 0;
          const r = new ReadTurns<{ id: number; length: number }>(reading, (f) => read.push({ ...f, turn }), { bytesPerTurn: budget, nextTurn: clock.nextTurn });
          let offered = 0;
          for (const step of script) {
            if (step === 'turn') {
              turn++;
              clock.step();
            } else r.offer(frame(++offered, step.length));
          }
          for (let i = 0; i < 1_000 && clock.scheduled; i++) {
            turn++;
            clock.step();
          }
          expect(read.map((f) => f.id)).toEqual(Array.from({ length: offered }, (_, i) => i + 1));
          const byTurn = new Map<number, number[]>();
          for (const f of read) byTurn.set(f.turn, [...(byTurn.get(f.turn) ?? []), f.length]);
          for (const lengths of byTurn.values()) {
            const beforeLast = lengths.slice(0, -1).reduce((n, l) => n + l, 0);
            expect(beforeLast).toBeLessThan(budget);
          }
          expect(reading.held).toBe(0);
          expect(r.waiting).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });
});
