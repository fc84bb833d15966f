import { describe, expect, it } from 'vitest';
import { AwarenessGate, DEFAULT_AWARENESS_LIMITS } from '../src/server/awareness-gate.js';
import { OutboundQueue, type OutboundSocket } from '../src/server/outbound-queue.js';

/** A socket whose sends never complete: everything past the in-flight window stays queued. */
class StuckSocket implements OutboundSocket {
  readonly sent: string[] = [];
  send(data: string): void {
    this.sent.push(data);
  }
}

describe('awareness rate per connection', () => {
  it('admits a burst, then the sustained rate, on a fake clock', () => {
    let now = 0;
    const gate = new AwarenessGate(DEFAULT_AWARENESS_LIMITS, () => now);
    let admitted = 0;
    for (let i = 0; i < 1_000; i++) if (gate.admit(200)) admitted++;
    expect(admitted).toBe(DEFAULT_AWARENESS_LIMITS.frameBurst);
    // Ten seconds of a flood at 1,000 frames a second: 30 a second get through.
    admitted = 0;
    for (let ms = 1; ms <= 10_000; ms++) {
      now = ms;
      if (gate.admit(200)) admitted++;
    }
    expect(admitted).toBeGreaterThanOrEqual(299);
    expect(admitted).toBeLessThanOrEqual(301);
  });

  it('bounds characters too: large frames get through at 128 KiB a second', () => {
    let now = 0;
    const gate = new AwarenessGate(DEFAULT_AWARENESS_LIMITS, () => now);
    let chars = 0;
    for (let ms = 0; ms <= 10_000; ms += 10) {
      now = ms;
      if (gate.admit(60_000)) chars += 60_000;
    }
    expect(chars).toBeLessThanOrEqual(DEFAULT_AWARENESS_LIMITS.charBurst + 10 * DEFAULT_AWARENESS_LIMITS.charsPerSecond);
    expect(chars).toBeGreaterThan(10 * DEFAULT_AWARENESS_LIMITS.charsPerSecond * 0.9);
  });
});

describe('awareness floods', () => {
  it('tells a flood (60 drops in a row) from a burst, once per run of drops', () => {
    let now = 0;
    const gate = new AwarenessGate(DEFAULT_AWARENESS_LIMITS, () => now);
    for (let i = 0; i < DEFAULT_AWARENESS_LIMITS.frameBurst; i++) expect(gate.admit(100)).toBe(true);
    // A burst a little past the budget is not a flood.
    for (let i = 0; i < 10; i++) expect(gate.admit(100)).toBe(false);
    expect(gate.flooding()).toBe(false);
    // An admitted frame ends the run.
    now += 100;
    expect(gate.admit(100)).toBe(true);
    let floods = 0;
    for (let i = 0; i < 130; i++) {
      gate.admit(100);
      if (gate.flooding()) floods++;
    }
    expect(floods).toBe(2);
  });

  it('counts a flood of large frames by characters: a few 64 KiB frames in a row are enough', () => {
    let now = 0;
    const gate = new AwarenessGate(DEFAULT_AWARENESS_LIMITS, () => now);
    let admitted = 0;
    while (gate.admit(88_000)) admitted++;
    expect(admitted).toBe(2);
    let drops = 1;
    while (!gate.flooding()) {
      gate.admit(88_000);
      drops++;
    }
    expect(drops).toBe(3);
  });
});

describe('awareness in the outbound queue', () => {
  it('is dropped, not queued, once a connection is backed up, and never counts as a slow consumer', () => {
    const socket = new StuckSocket();
    let overflowed = false;
    const queue = new OutboundQueue(socket, 1_000, { maxQueuedChars: 100_000, lowWaterChars: 50_000, onOverflow: () => (overflowed = true), onRoom: () => {} });
    let offered = 0;
    for (let i = 0; i < 10_000; i++) if (queue.offer(1, 'a'.repeat(500), 20_000)) offered++;
    expect(queue.queuedChars).toBeLessThanOrEqual(20_000);
    expect(offered).toBeLessThan(50);
    expect(overflowed).toBe(false);
    // Document frames are still queued as before: the flood cost the connection nothing.
    expect(queue.enqueue(10, 'crisis')).toBe(true);
    expect(overflowed).toBe(false);
  });
});
