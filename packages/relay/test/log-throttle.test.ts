import { describe, expect, it } from 'vitest';
import type { LogFields, LogLevel } from '../src/log.js';
import { createLogThrottle } from '../src/log-throttle.js';

/** A logger that keeps its lines, and a clock the test moves. */
const setup = (intervalMs?: number) => {
  const lines: { level: LogLevel; msg: string; fields: LogFields | undefined }[] = [];
  let t = 1_000_000;
  const throttle = createLogThrottle({
    log: { log: (level, msg, fields) => lines.push({ level, msg, fields }) },
    now: () => t,
    ...(intervalMs === undefined ? {} : { intervalMs }),
  });
  return { lines, throttle, advance: (ms: number) => (t += ms) };
};

describe('rate-limited logging', () => {
  it('writes at most one line per key per interval, the next one carrying how many were suppressed', () => {
    const { lines, throttle, advance } = setup();
    // 5,000 refusals within the first 10 s: one line.
    for (let i = 0; i < 5_000; i++) {
      throttle.log('webhook.BAD_SIGNATURE', 'warn', 'payment webhook refused', { outcome: 'BAD_SIGNATURE' });
      advance(1);
    }
    expect(lines).toEqual([{ level: 'warn', msg: 'payment webhook refused', fields: { outcome: 'BAD_SIGNATURE' } }]);
    advance(4_999);
    expect(lines).toHaveLength(1);
    // 9,999 ms after the first line: still inside the interval.
    throttle.log('webhook.BAD_SIGNATURE', 'warn', 'payment webhook refused', { outcome: 'BAD_SIGNATURE' });
    expect(lines).toHaveLength(1);
    advance(1);
    throttle.log('webhook.BAD_SIGNATURE', 'warn', 'payment webhook refused', { outcome: 'BAD_SIGNATURE' });
    expect(lines).toHaveLength(2);
    expect(lines[1]!.fields).toEqual({ outcome: 'BAD_SIGNATURE', suppressed: 5_000 });
    // The count restarts with each written line.
    advance(10_000);
    throttle.log('webhook.BAD_SIGNATURE', 'warn', 'payment webhook refused', { outcome: 'BAD_SIGNATURE' });
    expect(lines[2]!.fields).toEqual({ outcome: 'BAD_SIGNATURE' });
  });

  it('throttles each key on its own, so one flooded code cannot hide another', () => {
    const { lines, throttle, advance } = setup(1_000);
    for (let i = 0; i < 100; i++) throttle.log('webhook.BAD_SIGNATURE', 'warn', 'refused', { outcome: 'BAD_SIGNATURE' });
    throttle.log('admin.auth_failed', 'warn', 'admin authentication failed', { route: 'admin.tier' });
    expect(lines.map((l) => l.msg)).toEqual(['refused', 'admin authentication failed']);
    advance(999);
    throttle.log('admin.auth_failed', 'warn', 'admin authentication failed', { route: 'admin.tier' });
    expect(lines).toHaveLength(2);
  });

  it('flush writes the last suppressed line with the count of the others, once, and nothing when none are pending', () => {
    const { lines, throttle, advance } = setup();
    throttle.log('a', 'warn', 'first', { n: 1 });
    throttle.log('a', 'warn', 'later', { n: 2 });
    throttle.log('a', 'error', 'last', { n: 3 });
    throttle.log('b', 'info', 'alone');
    advance(1);
    throttle.flush();
    throttle.flush();
    expect(lines).toEqual([
      { level: 'warn', msg: 'first', fields: { n: 1 } },
      { level: 'info', msg: 'alone', fields: undefined },
      { level: 'error', msg: 'last', fields: { n: 3, suppressed: 1 } },
    ]);
    // Each line is one call plus its `suppressed`: all four calls are accounted for.
    expect(lines.reduce((n, l) => n + 1 + Number(l.fields?.suppressed ?? 0), 0)).toBe(4);
  });
});
