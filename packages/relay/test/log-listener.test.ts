import type { DeviceId, UserId } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { createRelayEvents } from '../src/events/relay-events.js';
import type { LogFields, LogLevel } from '../src/log.js';
import { createLogThrottle } from '../src/log-throttle.js';
import { createLogListener } from '../src/observe/log-listener.js';

const user = 'u-log' as UserId;
const mallory = 'd-mallory' as DeviceId;
const honest = 'd-honest' as DeviceId;

/** A bus and the log listener on a clock the test moves; the lines are kept. */
const setup = () => {
  const lines: { level: LogLevel; msg: string; fields: LogFields | undefined }[] = [];
  let t = 0;
  const log = { log: (level: LogLevel, msg: string, fields?: LogFields) => void lines.push({ level, msg, fields }) };
  const events = createRelayEvents({ log, now: () => t });
  const listener = createLogListener({ events, log, now: () => t });
  return { events, listener, lines, advance: (ms: number) => (t += ms) };
};

describe('the log listener', () => {
  it('writes connect and disconnect lines of authenticated devices with pseudonymous ids, codes and durations only', () => {
    const { events, lines } = setup();
    events.emit('connected', { conn: 1 });
    events.emit('authenticated', { conn: 1, user, device: honest, tier: 'premium', newUser: false });
    events.emit('disconnected', { conn: 1, user, device: honest, code: 1000, durationMs: 5_000 });
    // An unauthenticated socket that came and went: no line.
    events.emit('disconnected', { conn: 2, code: 1006, durationMs: 3 });
    expect(lines).toEqual([
      { level: 'info', msg: 'device connected', fields: { user, device: honest, tier: 'premium', newUser: false } },
      { level: 'info', msg: 'device disconnected', fields: { user, device: honest, code: 1000, durationMs: 5_000 } },
    ]);
  });

  it('throttles refusal lines per kind, code and device: a flooding device cannot hide an honest one', () => {
    const { events, lines, advance, listener } = setup();
    for (let i = 0; i < 1_000; i++) events.emit('refused', { user, device: mallory, code: 'SCHEMA', frame: 'push', kind: 'bad-frame' });
    events.emit('refused', { user, device: honest, code: 'SCHEMA', frame: 'sub', kind: 'bad-frame' });
    events.emit('refused', { user, device: honest, code: 'QUOTA_EXCEEDED', frame: 'push', kind: 'deferred' });
    expect(lines).toEqual([
      { level: 'warn', msg: 'bad frame', fields: { user, device: mallory, code: 'SCHEMA', frame: 'push' } },
      { level: 'warn', msg: 'bad frame', fields: { user, device: honest, code: 'SCHEMA', frame: 'sub' } },
      { level: 'info', msg: 'envelope deferred', fields: { user, device: honest, code: 'QUOTA_EXCEEDED', frame: 'push' } },
    ]);
    advance(10_000);
    events.emit('refused', { user, device: mallory, code: 'SCHEMA', frame: 'push', kind: 'bad-frame' });
    expect(lines[3]).toEqual({ level: 'warn', msg: 'bad frame', fields: { user, device: mallory, code: 'SCHEMA', frame: 'push', suppressed: 999 } });
    // Stopping writes what is still suppressed, then nothing more is logged.
    events.emit('refused', { user, device: mallory, code: 'SCHEMA', frame: 'push', kind: 'bad-frame' });
    listener.stop();
    expect(lines).toHaveLength(5);
    events.emit('refused', { user, device: honest, code: 'COUNTER_GAP', frame: 'push', kind: 'rejected' });
    expect(lines).toHaveLength(5);
  });
});

describe('a throttle with a bound on its keys', () => {
  it('forgets the stalest key past maxKeys, writing its suppressed count first', () => {
    const lines: { msg: string; fields: LogFields | undefined }[] = [];
    let t = 0;
    const throttle = createLogThrottle({ log: { log: (_l, msg, fields) => void lines.push({ msg, fields }) }, now: () => t, maxKeys: 2 });
    throttle.log('a', 'warn', 'a', {});
    throttle.log('a', 'warn', 'a', {});
    throttle.log('a', 'warn', 'a', {});
    t += 1;
    throttle.log('b', 'warn', 'b', {});
    expect(lines.map((l) => l.msg)).toEqual(['a', 'b']);
    // A third key: 'a' (the stalest) goes, its two suppressed lines accounted for (one written, one counted).
    throttle.log('c', 'warn', 'c', {});
    expect(lines).toEqual([
      { msg: 'a', fields: {} },
      { msg: 'b', fields: {} },
      { msg: 'c', fields: {} },
      { msg: 'a', fields: { suppressed: 1 } },
    ]);
    // 'a' was forgotten: its next line is written at once.
    throttle.log('a', 'warn', 'a', {});
    expect(lines).toHaveLength(5);
  });
});
