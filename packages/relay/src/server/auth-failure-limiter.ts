/** A token bucket's size and refill: `failures` allowed per `perMs`, refilled continuously. */
export interface FailureBudget {
  readonly failures: number;
  readonly perMs: number;
}

export interface AuthFailureLimits {
  /** Per remote address (IPv6: per /64). Default 10 a minute. */
  readonly perAddress: FailureBudget;
  /**
   * All addresses together. Default 60 a minute: caps a distributed guesser at one guess a
   * second in total, at the price that such an attacker also locks the operator out meanwhile.
   */
  readonly global: FailureBudget;
  /** Addresses remembered at most (least recently failed forgotten first). Default 10,000. */
  readonly maxAddresses: number;
}

export const DEFAULT_AUTH_FAILURE_LIMITS: AuthFailureLimits = {
  perAddress: { failures: 10, perMs: 60_000 },
  global: { failures: 60, perMs: 60_000 },
  maxAddresses: 10_000,
};

/**
 * Budgets of failed authentications. A caller asks {@link AuthFailureLimiter.retryAfterMs}
 * before checking a credential, and refuses without checking while it is above 0: a guesser
 * past the budget learns nothing, right or wrong.
 */
export interface AuthFailureLimiter {
  /** Ms until `address` may fail once more (its own budget and the global one); 0 when it may now. */
  retryAfterMs(address: string): number;
  /** Spends one failure of `address`'s budget and one of the global budget. */
  recordFailure(address: string): void;
  /** Addresses currently remembered (bounded by `maxAddresses`). */
  readonly trackedAddresses: number;
}

/*
 * Each budget is a token bucket kept as one number, the generic cell rate algorithm's
 * "theoretical arrival time": every failure pushes it `perMs / failures` further, and a budget
 * is spent while it lies more than `perMs` minus one interval ahead of now. Whole-millisecond
 * budgets stay exact, with no refill arithmetic to round.
 */
const intervalOf = (budget: FailureBudget) => budget.perMs / budget.failures;

const waitMs = (tat: number, budget: FailureBudget, now: number): number =>
  Math.max(0, Math.ceil(tat - now - (budget.failures - 1) * intervalOf(budget)));

/** Creates a limiter on an injected clock. */
export const createAuthFailureLimiter = (now: () => number, limits: AuthFailureLimits = DEFAULT_AUTH_FAILURE_LIMITS): AuthFailureLimiter => {
  let globalTat = 0;
  // A Map iterates in insertion order; re-inserting on use makes its first key the least recent.
  const byAddress = new Map<string, number>();

  return {
    retryAfterMs(address) {
      const at = now();
      const tat = byAddress.get(address);
      return Math.max(waitMs(globalTat, limits.global, at), tat === undefined ? 0 : waitMs(tat, limits.perAddress, at));
    },
    recordFailure(address) {
      const at = now();
      globalTat = Math.max(globalTat, at) + intervalOf(limits.global);
      const tat = Math.max(byAddress.get(address) ?? 0, at) + intervalOf(limits.perAddress);
      byAddress.delete(address);
      byAddress.set(address, tat);
      // Forgetting an address gives it a fresh budget; the global budget still holds it back.
      while (byAddress.size > limits.maxAddresses) byAddress.delete(byAddress.keys().next().value!);
    },
    get trackedAddresses() {
      return byAddress.size;
    },
  };
};

/** An IPv4 client as a dual-stack socket reports it. */
const IPV4_MAPPED = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

/**
 * The budget key of a remote address: IPv4 as is, IPv6 by its /64 — one subscriber usually
 * holds a whole /64, and would otherwise get 2^64 fresh budgets.
 */
export const addressKey = (remote: string | undefined): string => {
  if (!remote) return 'unknown';
  const mapped = IPV4_MAPPED.exec(remote);
  if (mapped) return mapped[1]!;
  if (!remote.includes(':')) return remote;
  const bare = remote.split('%')[0]!;
  // An embedded IPv4 (a.b.c.d) fills two hextets.
  const width = (groups: string[]) => groups.reduce((n, g) => n + (g.includes('.') ? 2 : 1), 0);
  let groups: string[];
  const gap = bare.indexOf('::');
  if (gap >= 0) {
    const head = bare.slice(0, gap) === '' ? [] : bare.slice(0, gap).split(':');
    const tail = bare.slice(gap + 2) === '' ? [] : bare.slice(gap + 2).split(':');
    groups = [...head, ...Array<string>(Math.max(0, 8 - width(head) - width(tail))).fill('0'), ...tail];
  } else {
    groups = bare.split(':');
  }
  return `${groups
    .slice(0, 4)
    .map((g) => (/^[0-9a-f]{1,4}$/i.test(g) ? Number.parseInt(g, 16).toString(16) : g))
    .join(':')}::/64`;
};
