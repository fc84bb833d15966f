/**
 * What one network address may open: new WebSocket connections at a sustained rate with a
 * burst, and a number of unauthenticated connections at once. The global cap on
 * unauthenticated connections (`maxPendingConnections`) keeps the relay's memory bounded; this
 * keeps one address from taking all of that cap, so others can still connect while it floods.
 *
 * An address is a key from `addressKey` (an IPv4 address, or an IPv6 /64: one host gets a
 * whole /64). Behind a reverse proxy it must be the client's address, not the proxy's.
 */
export interface AddressLimits {
  /** New connections one address may open at once after a quiet spell. */
  readonly connectBurst: number;
  /** New connections per second one address may open, sustained. */
  readonly connectPerSecond: number;
  /** Unauthenticated connections of one address at once. */
  readonly maxPendingPerAddress: number;
  /**
   * Addresses tracked at once. Past it the least recently seen is forgotten (its bucket refills
   * early): memory stays bounded whatever number of addresses a botnet brings, at the price of
   * a looser limit for each of them.
   */
  readonly maxAddresses: number;
}

export const DEFAULT_ADDRESS_LIMITS: AddressLimits = {
  // A clinic behind one NAT reconnecting after a relay restart: 128 at once, then 32 a second.
  connectBurst: 128,
  connectPerSecond: 32,
  maxPendingPerAddress: 256,
  maxAddresses: 100_000,
};

export type AddressRefusal = 'RATE' | 'PENDING';

interface Entry {
  tokens: number;
  at: number;
  pending: number;
}

/** Per-address connection accounting on an injected clock; holds at most `maxAddresses` entries. */
export const createAddressLimiter = (limits: AddressLimits, now: () => number) => {
  const entries = new Map<string, Entry>();

  const touch = (address: string): Entry => {
    const t = now();
    let entry = entries.get(address);
    if (entry) {
      entries.delete(address);
      entry.tokens = Math.min(limits.connectBurst, entry.tokens + ((t - entry.at) * limits.connectPerSecond) / 1000);
      entry.at = t;
    } else {
      entry = { tokens: limits.connectBurst, at: t, pending: 0 };
      if (entries.size >= limits.maxAddresses) {
        // The least recently seen address goes (Map order is insertion order; a touch re-inserts).
        const oldest = entries.keys().next();
        if (!oldest.done) entries.delete(oldest.value);
      }
    }
    entries.set(address, entry);
    return entry;
  };

  return {
    /** A new connection from `address`: admitted (and counted as pending), or why not. */
    admit(address: string): AddressRefusal | undefined {
      const entry = touch(address);
      if (entry.pending >= limits.maxPendingPerAddress) return 'PENDING';
      if (entry.tokens < 1) return 'RATE';
      entry.tokens -= 1;
      entry.pending += 1;
      return undefined;
    },

    /** A connection of `address` left the unauthenticated state (authenticated, paired or closed). */
    leftPending(address: string): void {
      const entry = entries.get(address);
      if (!entry || entry.pending === 0) return;
      entry.pending -= 1;
      // Nothing to remember about an idle address whose bucket is full again.
      if (entry.pending === 0 && entry.tokens + ((now() - entry.at) * limits.connectPerSecond) / 1000 >= limits.connectBurst) entries.delete(address);
    },

    /** Seconds until `address` may open a connection again (for Retry-After). */
    retryAfterSeconds(address: string): number {
      const entry = entries.get(address);
      if (!entry || entry.tokens >= 1) return 1;
      return Math.max(1, Math.ceil((1 - entry.tokens) / limits.connectPerSecond));
    },

    size(): number {
      return entries.size;
    },
  };
};
export type AddressLimiter = ReturnType<typeof createAddressLimiter>;
