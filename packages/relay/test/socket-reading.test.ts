import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SocketReading } from '../src/server/socket-reading.js';

const socket = () => {
  const s = { reading: true, pauses: 0, pause: () => ((s.reading = false), s.pauses++), resume: () => void (s.reading = true) };
  return s;
};

describe('socket reading', () => {
  beforeEach(() => void vi.useFakeTimers());
  afterEach(() => void vi.useRealTimers());

  it('reads again only when every holder has let go, and sends a keepalive every 2 s meanwhile', () => {
    const s = socket();
    let keepalives = 0;
    const reading = new SocketReading(s, () => keepalives++);
    reading.hold();
    reading.hold();
    expect(s.reading).toBe(false);
    vi.advanceTimersByTime(4_100);
    expect(keepalives).toBe(2);
    reading.release();
    expect(s.reading).toBe(false);
    vi.advanceTimersByTime(2_000);
    expect(keepalives).toBe(3);
    reading.release();
    expect(s.reading).toBe(true);
    vi.advanceTimersByTime(10_000);
    expect(keepalives).toBe(3);
    // A release too many does not go below zero: the next hold pauses again.
    reading.release();
    reading.hold();
    expect(s.reading).toBe(false);
    expect(s.pauses).toBe(2);
  });

  it('holds for a while without extending a running timed hold, beside other holders', () => {
    const s = socket();
    const reading = new SocketReading(s, () => {});
    reading.holdFor(1_000);
    expect(reading.timedHold).toBe(true);
    vi.advanceTimersByTime(600);
    reading.holdFor(1_000); // not extended
    reading.hold(); // the work queue's backlog
    vi.advanceTimersByTime(500);
    expect(reading.timedHold).toBe(false);
    expect(s.reading).toBe(false);
    reading.release();
    expect(s.reading).toBe(true);
  });

  it('once closed, reads for good and stops every timer', () => {
    const s = socket();
    let keepalives = 0;
    const reading = new SocketReading(s, () => keepalives++);
    reading.hold();
    reading.holdFor(5_000);
    reading.close();
    expect(s.reading).toBe(true);
    reading.hold();
    expect(s.reading).toBe(true);
    vi.advanceTimersByTime(10_000);
    expect(keepalives).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
  });
});
