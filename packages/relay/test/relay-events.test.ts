import type { DeviceId, DocId, UserId } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { createRelayEvents, frameLabel } from '../src/events/relay-events.js';
import type { LogFields, LogLevel } from '../src/log.js';

const user = 'u-test' as UserId;
const device = 'd-test' as DeviceId;
const doc = 'doc-test' as DocId;

/** A bus on a clock the test moves, with a logger that keeps its lines. */
const setup = () => {
  const lines: { level: LogLevel; msg: string; fields: LogFields | undefined }[] = [];
  let t = 5_000;
  const events = createRelayEvents({ log: { log: (level, msg, fields) => lines.push({ level, msg, fields }) }, now: () => t });
  return { events, lines, advance: (ms: number) => (t += ms) };
};

describe('the relay event bus', () => {
  it('calls listeners synchronously, in the order they were added, with the payload emitted', () => {
    const { events } = setup();
    const seen: string[] = [];
    events.on('committed', (e) => seen.push(`a:${e.envelopes}`));
    events.on('committed', (e) => seen.push(`b:${e.bytes}`));
    events.emit('committed', { user, device, doc, lane: 10, envelopes: 3, bytes: 700, latencyMs: 4, tier: 'premium' });
    // Before emit returned: nothing was deferred to a later turn.
    expect(seen).toEqual(['a:3', 'b:700']);
  });

  it('a listener that throws is logged and skipped: the emitter and the other listeners carry on', () => {
    const { events, lines } = setup();
    const seen: number[] = [];
    events.on('authFailed', () => {
      throw new Error('listener bug');
    });
    events.on('authFailed', () => seen.push(1));
    expect(() => events.emit('authFailed', { code: 'AUTH_FAILED' })).not.toThrow();
    events.emit('authFailed', { code: 'AUTH_FAILED' });
    expect(seen).toEqual([1, 1]);
    expect(lines).toEqual([
      { level: 'error', msg: 'event listener failed', fields: { event: 'authFailed', error: 'listener bug' } },
      { level: 'error', msg: 'event listener failed', fields: { event: 'authFailed', error: 'listener bug' } },
    ]);
  });

  it('unsubscribe removes exactly that listener, once, even while the event is being emitted', () => {
    const { events } = setup();
    const seen: string[] = [];
    const offA = events.on('connected', () => {
      seen.push('a');
      // Removing itself mid-emit does not skip the next listener of this emit.
      offA();
    });
    const offB = events.on('connected', () => seen.push('b'));
    events.emit('connected', { conn: 1 });
    events.emit('connected', { conn: 2 });
    expect(seen).toEqual(['a', 'b', 'b']);
    offB();
    offB();
    events.emit('connected', { conn: 3 });
    expect(seen).toEqual(['a', 'b', 'b']);
    expect(events.has('connected')).toBe(false);
  });

  it('a listener added twice is called twice and removed one registration at a time', () => {
    const { events } = setup();
    let calls = 0;
    const listener = () => calls++;
    const off1 = events.on('webhook', listener);
    events.on('webhook', listener);
    events.emit('webhook', { outcome: 'applied' });
    expect(calls).toBe(2);
    off1();
    events.emit('webhook', { outcome: 'applied' });
    expect(calls).toBe(3);
  });

  it('says whether anyone listens, and reads the injected clock', () => {
    const { events, advance } = setup();
    expect(events.has('delivered')).toBe(false);
    const off = events.on('delivered', () => {});
    expect(events.has('delivered')).toBe(true);
    off();
    expect(events.has('delivered')).toBe(false);
    expect(events.now()).toBe(5_000);
    advance(250);
    expect(events.now()).toBe(5_250);
  });

  it('turns a frame type into a label from a fixed set: a peer cannot mint new ones', () => {
    expect(frameLabel('push')).toBe('push');
    expect(frameLabel('pair-join')).toBe('pair-join');
    expect(frameLabel('push\n{"msg":"forged"}')).toBe('unknown');
    expect(frameLabel('x'.repeat(10_000))).toBe('unknown');
  });
});
