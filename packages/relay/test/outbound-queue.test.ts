import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { OutboundQueue, type OutboundSocket } from '../src/server/outbound-queue.js';

/** A socket that only records sends; the test decides when each one completes. */
class FakeSocket implements OutboundSocket {
  readonly sent: string[] = [];
  readonly #pending: { frame: string; cb: (error?: Error) => void }[] = [];
  onSend: (frame: string) => void = () => {};

  send(data: string, cb: (error?: Error) => void): void {
    this.onSend(data);
    this.sent.push(data);
    this.#pending.push({ frame: data, cb });
  }

  get inflight(): readonly string[] {
    return this.#pending.map((p) => p.frame);
  }

  /** Completes the `index`-th outstanding send (oldest first by default). */
  complete(index = 0, error?: Error): void {
    const [entry] = this.#pending.splice(index, 1);
    if (!entry) throw new Error(`no outstanding send at ${index}`);
    entry.cb(error);
  }
}

/** Frames named `<lane>:<tag>` so the tests can read the lane a frame was queued on. */
const frame = (lane: number, tag: string | number): string => `${lane}:${tag}`;
const laneOf = (f: string): number => Number(f.slice(0, f.indexOf(':')));

describe('OutboundQueue', () => {
  it('sends a crisis frame queued behind many bulk frames as soon as the window frees', () => {
    const socket = new FakeSocket();
    // A window of one byte: exactly one frame in flight at a time.
    const queue = new OutboundQueue(socket, 1);
    for (let i = 0; i < 50; i++) queue.enqueue(3, frame(3, i));
    expect(socket.sent).toEqual([frame(3, 0)]);
    expect(queue.queued).toBe(49);

    queue.enqueue(10, frame(10, 'crisis'));
    expect(socket.sent).toHaveLength(1);
    expect(queue.queued).toBe(50);

    socket.complete();
    expect(socket.sent).toEqual([frame(3, 0), frame(10, 'crisis')]);
    while (socket.inflight.length > 0) socket.complete();
    expect(socket.sent).toEqual([frame(3, 0), frame(10, 'crisis'), ...Array.from({ length: 49 }, (_, i) => frame(3, i + 1))]);
    expect(queue.queued).toBe(0);
  });

  it('keeps several frames in flight up to the high-water mark, and no more', () => {
    const socket = new FakeSocket();
    const queue = new OutboundQueue(socket, 25);
    for (let i = 0; i < 6; i++) queue.enqueue(5, `5:${String(i).padStart(8, '0')}`); // 10 chars each
    // 0 < 25, 10 < 25, 20 < 25: three frames, 30 chars, then the window is full.
    expect(socket.inflight).toHaveLength(3);
    socket.complete();
    expect(socket.inflight).toHaveLength(3);
    expect(socket.sent).toHaveLength(4);
  });

  it('is first-in first-out within a lane and highest lane first across lanes', () => {
    const socket = new FakeSocket();
    const queue = new OutboundQueue(socket, 1);
    queue.enqueue(1, frame(1, 'blocker'));
    const order: [number, string][] = [
      [1, 'a'],
      [5, 'a'],
      [5, 'b'],
      [1, 'b'],
      [7, 'a'],
      [5, 'c'],
      [10, 'a'],
      [1, 'c'],
      [10, 'b'],
    ];
    for (const [lane, tag] of order) queue.enqueue(lane, frame(lane, tag));
    while (socket.inflight.length > 0) socket.complete();
    expect(socket.sent).toEqual(['1:blocker', '10:a', '10:b', '7:a', '5:a', '5:b', '5:c', '1:a', '1:b', '1:c']);
  });

  it('files out-of-range lanes under the nearest lane instead of dropping them', () => {
    const socket = new FakeSocket();
    const queue = new OutboundQueue(socket, 1);
    queue.enqueue(1, 'blocker');
    queue.enqueue(0, 'zero');
    queue.enqueue(10, 'ten');
    queue.enqueue(99, 'ninety-nine');
    queue.enqueue(-4, 'negative');
    queue.enqueue(2.9, 'two-point-nine');
    queue.enqueue(2, 'two');
    while (socket.inflight.length > 0) socket.complete();
    expect(socket.sent).toEqual(['blocker', 'ten', 'ninety-nine', 'two-point-nine', 'two', 'zero', 'negative']);
  });

  it('keeps order across the compaction of a long lane', () => {
    const socket = new FakeSocket();
    const queue = new OutboundQueue(socket, 1);
    const n = 3000;
    for (let i = 0; i < n; i++) queue.enqueue(4, frame(4, i));
    // Keep adding while draining, so the lane is compacted with frames still behind the head.
    for (let i = 0; i < n; i++) {
      socket.complete();
      if (i % 3 === 0) queue.enqueue(4, frame(4, n + i / 3));
    }
    while (socket.inflight.length > 0) socket.complete();
    const expected = [...Array.from({ length: n }, (_, i) => i), ...Array.from({ length: n / 3 }, (_, i) => n + i)].map((i) => frame(4, i));
    expect(socket.sent).toEqual(expected);
  });

  it('drops queued frames on close and sends nothing afterwards', () => {
    const socket = new FakeSocket();
    const queue = new OutboundQueue(socket, 1);
    for (let i = 0; i < 5; i++) queue.enqueue(6, frame(6, i));
    queue.close();
    expect(queue.queued).toBe(0);
    socket.complete(0, new Error('socket closed'));
    queue.enqueue(10, frame(10, 'late'));
    expect(socket.sent).toEqual([frame(6, 0)]);
    expect(socket.inflight).toEqual([]);
  });

  it('drops a peer that stops reading instead of queueing without end, and nothing after that', () => {
    const socket = new FakeSocket();
    let overflows = 0;
    const queue = new OutboundQueue(socket, 10, { maxQueuedChars: 100, lowWaterChars: 50, onOverflow: () => overflows++, onRoom: () => {} });
    // The peer never reads: the first frame stays in flight, the rest queue up to the bound.
    const accepted: boolean[] = [];
    for (let i = 0; i < 30; i++) accepted.push(queue.enqueue(3, `3:${String(i).padStart(8, '0')}`)); // 10 chars each
    expect(socket.sent).toHaveLength(1);
    expect(queue.queuedChars).toBeLessThanOrEqual(100);
    expect(accepted.filter(Boolean)).toHaveLength(11);
    expect(overflows).toBe(1);
    // Crisis frames are refused too: the connection is about to be dropped and the device catches up.
    expect(queue.enqueue(10, '10:crisis')).toBe(false);
    expect(overflows).toBe(1);
  });

  it('paces a producer: no room above the low-water mark, a call back once below it', () => {
    const socket = new FakeSocket();
    let rooms = 0;
    const queue = new OutboundQueue(socket, 10, { maxQueuedChars: 1_000, lowWaterChars: 35, onOverflow: () => {}, onRoom: () => rooms++ });
    expect(queue.hasRoom()).toBe(true);
    for (let i = 0; i < 6; i++) queue.enqueue(2, `2:${String(i).padStart(8, '0')}`);
    // One in flight, five (50 chars) queued: above the low-water mark.
    expect(queue.hasRoom()).toBe(false);
    socket.complete();
    expect(rooms).toBe(0); // 40 chars queued: still above
    socket.complete();
    expect(rooms).toBe(1); // 30 chars: below, and the producer asked
    socket.complete();
    expect(rooms).toBe(1); // called once per refusal
    expect(queue.hasRoom()).toBe(true);
  });

  it('loses and duplicates nothing and always sends from the highest non-empty lane (property)', () => {
    type Command = { readonly kind: 'enqueue'; readonly lane: number; readonly size: number } | { readonly kind: 'complete'; readonly pick: number };
    const command: fc.Arbitrary<Command> = fc.oneof(
      fc.record({ kind: fc.constant('enqueue' as const), lane: fc.integer({ min: 1, max: 10 }), size: fc.integer({ min: 0, max: 30 }) }),
      fc.record({ kind: fc.constant('complete' as const), pick: fc.nat() }),
    );

    fc.assert(
      fc.property(fc.integer({ min: 1, max: 80 }), fc.array(command, { maxLength: 120 }), (highWater, commands) => {
        const socket = new FakeSocket();
        const queue = new OutboundQueue(socket, highWater);
        // The model: frames enqueued and not yet sent, in enqueue order.
        const waiting: string[] = [];
        const enqueued: string[] = [];
        let inflightChars = 0;
        socket.onSend = (f) => {
          const top = Math.max(...waiting.map(laneOf));
          expect(laneOf(f)).toBe(top);
          expect(f).toBe(waiting.find((w) => laneOf(w) === top));
          expect(inflightChars).toBeLessThan(highWater);
          waiting.splice(waiting.indexOf(f), 1);
          inflightChars += f.length;
        };
        const completeAt = (pick: number) => {
          const index = pick % socket.inflight.length;
          inflightChars -= socket.inflight[index]!.length;
          socket.complete(index);
        };

        for (const [i, c] of commands.entries()) {
          if (c.kind === 'enqueue') {
            const f = `${c.lane}:${i}:`.padEnd(c.size, '.');
            waiting.push(f);
            enqueued.push(f);
            queue.enqueue(c.lane, f);
          } else if (socket.inflight.length > 0) {
            completeAt(c.pick);
          }
          // No stall: anything still waiting is waiting only for the window.
          if (waiting.length > 0) expect(inflightChars).toBeGreaterThanOrEqual(highWater);
          expect(queue.queued).toBe(waiting.length);
        }
        while (socket.inflight.length > 0) completeAt(0);

        expect(waiting).toEqual([]);
        expect(queue.queued).toBe(0);
        expect([...socket.sent].sort()).toEqual([...enqueued].sort());
        expect(new Set(socket.sent).size).toBe(enqueued.length);
      }),
      { seed: 20240611, numRuns: 300 },
    );
  });
});
