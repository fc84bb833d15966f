import { describe, expect, it } from 'vitest';
import { createAddressLimiter } from '../src/server/address-limits.js';

const limits = { connectBurst: 4, connectPerSecond: 2, maxPendingPerAddress: 3, maxAddresses: 3 };

describe('address limits (fake clock)', () => {
  it('admits a burst, then the sustained rate, per address; another address is not affected', () => {
    let now = 0;
    const limiter = createAddressLimiter({ ...limits, maxPendingPerAddress: 100 }, () => now);
    expect(Array.from({ length: 5 }, () => limiter.admit('10.0.0.1'))).toEqual([undefined, undefined, undefined, undefined, 'RATE']);
    expect(limiter.retryAfterSeconds('10.0.0.1')).toBe(1);
    expect(limiter.admit('10.0.0.2')).toBeUndefined();
    now += 500;
    expect(limiter.admit('10.0.0.1')).toBeUndefined();
    expect(limiter.admit('10.0.0.1')).toBe('RATE');
  });

  it('holds at most maxPendingPerAddress unauthenticated connections of one address, freed as they leave that state', () => {
    let now = 0;
    const limiter = createAddressLimiter({ ...limits, connectBurst: 100 }, () => now);
    for (let i = 0; i < 3; i++) expect(limiter.admit('a')).toBeUndefined();
    expect(limiter.admit('a')).toBe('PENDING');
    limiter.leftPending('a');
    expect(limiter.admit('a')).toBeUndefined();
    // Leaving twice (closed after authenticating) frees nothing more than it took.
    for (let i = 0; i < 10; i++) limiter.leftPending('a');
    // An address with nothing pending and a full bucket again is forgotten when its last connection leaves.
    expect(limiter.admit('b')).toBeUndefined();
    now += 10_000;
    limiter.leftPending('b');
    expect(limiter.size()).toBe(1);
  });

  it('tracks a bounded number of addresses, forgetting the least recently seen', () => {
    let now = 0;
    const limiter = createAddressLimiter(limits, () => now);
    for (let i = 0; i < 10_000; i++) limiter.admit(`10.${i >> 8}.${i & 255}.1`);
    expect(limiter.size()).toBe(3);
  });
});
