import type { TierName, UserId } from '@keel/engine';

/** Tiers a user pays for: the ones a failed payment puts into a grace period. */
export type PaidTier = 'basic' | 'premium';
export const PAID_TIERS: readonly PaidTier[] = ['basic', 'premium'];
export const isPaidTier = (tier: TierName): tier is PaidTier => tier === 'basic' || tier === 'premium';

/** Higher is more: which of two paid tiers a user with two subscriptions gets. */
const PAID_RANK: Record<PaidTier, number> = { basic: 1, premium: 2 };
export const betterPaidTier = (a: PaidTier | null, b: PaidTier | null): PaidTier | null =>
  a === null ? b : b === null ? a : PAID_RANK[b] > PAID_RANK[a] ? b : a;

/** How long grace periods last. All durations in ms. */
export interface GracePolicy {
  /** Length of a first grace period, by the paid tier the user held. */
  readonly baseMs: Readonly<Record<PaidTier, number>>;
  /** Failures this far back count toward shortening the next grace period. */
  readonly windowMs: number;
  /** No grace period is shorter than this. */
  readonly floorMs: number;
}

const DAY = 24 * 60 * 60 * 1000;

/** Premium 14 days, basic 7, halved per further failure in 90 days, never under 1 day. */
export const DEFAULT_GRACE_POLICY: GracePolicy = Object.freeze({
  baseMs: Object.freeze({ basic: 7 * DAY, premium: 14 * DAY }),
  windowMs: 90 * DAY,
  floorMs: DAY,
});

/**
 * Grace length = max(floor, base[tier] / 2^(failuresInWindow − 1)), in whole ms.
 * `failuresInWindow` counts the failure starting this period (so it is ≥ 1) and every earlier
 * failure that started a grace period in the rolling window. Premium with the defaults:
 * 14 d, 7 d, 3.5 d, 1.75 d, then 1 d.
 */
export const graceLengthMs = (policy: GracePolicy, tier: PaidTier, failuresInWindow: number): number => {
  const halvings = Math.max(0, Math.floor(failuresInWindow) - 1);
  return Math.max(policy.floorMs, Math.floor(policy.baseMs[tier] / 2 ** halvings));
};

/** The timer functions of the host, injected so tests drive them on a fake clock. */
export interface TimerDeps {
  readonly now: () => number;
  readonly setTimeout: (fn: () => void, ms: number) => unknown;
  readonly clearTimeout: (handle: unknown) => void;
}

export const systemTimers: TimerDeps = {
  now: Date.now,
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** Node's timers fire at once past 2^31 − 1 ms (~24.8 days); longer waits are chained. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * One timer per open grace period, keyed by user and set for its absolute end. Only the end
 * time matters: a timer set again (after a restart) fires at the same moment.
 */
export const createGraceTimers = (timers: TimerDeps, onDue: (userId: UserId) => void) => {
  const pending = new Map<UserId, unknown>();
  const arm = (userId: UserId, endsAt: number): void => {
    const wait = Math.max(0, endsAt - timers.now());
    const handle = timers.setTimeout(() => {
      pending.delete(userId);
      if (wait > MAX_TIMER_MS) arm(userId, endsAt);
      else onDue(userId);
    }, Math.min(wait, MAX_TIMER_MS));
    // Pending grace timers must not keep a stopping relay alive; the end time is durable.
    (handle as { unref?: () => void } | null)?.unref?.();
    pending.set(userId, handle);
  };
  const cancel = (userId: UserId): void => {
    const handle = pending.get(userId);
    if (handle === undefined) return;
    timers.clearTimeout(handle);
    pending.delete(userId);
  };
  return {
    schedule(userId: UserId, endsAt: number): void {
      cancel(userId);
      arm(userId, endsAt);
    },
    cancel,
    cancelAll(): void {
      for (const handle of pending.values()) timers.clearTimeout(handle);
      pending.clear();
    },
    get size(): number {
      return pending.size;
    },
  };
};
export type GraceTimers = ReturnType<typeof createGraceTimers>;
