import { describe, expect, it } from 'vitest';
import { addressKey, createAuthFailureLimiter } from '../src/server/auth-failure-limiter.js';

const clock = () => {
  let t = 5_000_000;
  return { now: () => t, advance: (ms: number) => (t += ms) };
};

describe('failed-login budgets (token buckets on an injected clock)', () => {
  it('allows 10 failures a minute per address, then says how long to wait; the budget refills over time', () => {
    const { now, advance } = clock();
    const limiter = createAuthFailureLimiter(now);
    for (let i = 0; i < 10; i++) {
      expect(limiter.retryAfterMs('198.51.100.7')).toBe(0);
      limiter.recordFailure('198.51.100.7');
    }
    // One failure comes back every 6 s.
    expect(limiter.retryAfterMs('198.51.100.7')).toBe(6_000);
    advance(4_000);
    expect(limiter.retryAfterMs('198.51.100.7')).toBe(2_000);
    advance(2_000);
    expect(limiter.retryAfterMs('198.51.100.7')).toBe(0);
    limiter.recordFailure('198.51.100.7');
    expect(limiter.retryAfterMs('198.51.100.7')).toBe(6_000);
    // Another address is not held back by this one.
    expect(limiter.retryAfterMs('203.0.113.9')).toBe(0);
  });

  it('caps failures from all addresses together at 60 a minute', () => {
    const { now, advance } = clock();
    const limiter = createAuthFailureLimiter(now);
    // 12 addresses × 5 failures: no address is near its own budget.
    for (let a = 0; a < 12; a++) for (let i = 0; i < 5; i++) limiter.recordFailure(`192.0.2.${a}`);
    expect(limiter.retryAfterMs('192.0.2.200')).toBe(1_000);
    advance(1_000);
    expect(limiter.retryAfterMs('192.0.2.200')).toBe(0);
  });

  it('remembers at most maxAddresses, forgetting the least recently failed first', () => {
    const { now } = clock();
    const limits = { perAddress: { failures: 2, perMs: 60_000 }, global: { failures: 1e9, perMs: 60_000 }, maxAddresses: 100 };
    const limiter = createAuthFailureLimiter(now, limits);
    for (let i = 0; i < 10_000; i++) limiter.recordFailure(`a${i}`);
    expect(limiter.trackedAddresses).toBe(100);
    // a0 was forgotten (fresh budget); the most recent one is still held to its budget.
    expect(limiter.retryAfterMs('a0')).toBe(0);
    limiter.recordFailure('a9999');
    expect(limiter.retryAfterMs('a9999')).toBeGreaterThan(0);
    expect(limiter.trackedAddresses).toBe(100);
  });
});

describe('budget key of a remote address', () => {
  it('keeps IPv4 (also as a dual-stack socket reports it) and groups IPv6 by /64', () => {
    expect(addressKey('198.51.100.7')).toBe('198.51.100.7');
    expect(addressKey('::ffff:198.51.100.7')).toBe('198.51.100.7');
    expect(addressKey('2001:db8:aa:bb:1:2:3:4')).toBe('2001:db8:aa:bb::/64');
    expect(addressKey('2001:0DB8:00aa:00bb:ffff::1')).toBe('2001:db8:aa:bb::/64');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('2001:db8::ffff:1')).toBe(addressKey('2001:db8:0:0:1::'));
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey('64:ff9b::192.0.2.1')).toBe('64:ff9b:0:0::/64');
    expect(addressKey(undefined)).toBe('unknown');
  });
});
