import { ErrorCode, type KeelError, type TierPolicy, type UserId, isCrisisLane } from '@keel/engine';
import type { RelayStore } from '../storage/relay-store.js';

/** A refusal the device should retry later, or a refusal for good (no `retryAfterMs`). */
/** A refusal of one envelope: a deferral carries when to retry; a counter gap, the counter expected next. */
export type QuotaRefusal = KeelError & { readonly retryAfterMs?: number; readonly expected?: number };

/** Seconds of the tier's bandwidth a user may burst before being deferred. */
const BURST_SECONDS = 2;
const DAY_MS = 86_400_000;

export const utcDay = (ms: number): string => new Date(ms).toISOString().slice(0, 10);

interface Bucket {
  tokens: number;
  at: number;
}

/**
 * Server-side enforcement of what a user pays for: per-user bandwidth (token bucket), daily
 * data and the largest single sync. A client cannot be trusted with its own limits. Crisis lanes
 * are never limited and never metered.
 */
export const createQuotaGuard = (store: RelayStore, now: () => number) => {
  const buckets = new Map<UserId, Bucket>();
  // Bytes counted today per user, including reservations not yet committed.
  const daily = new Map<string, number>();

  let today = '';
  const usedToday = (userId: UserId, day: string): number => {
    if (day !== today) {
      // A new UTC day: yesterday's counters are no longer needed in memory.
      daily.clear();
      today = day;
    }
    return daily.get(`${userId} ${day}`) ?? 0;
  };

  return {
    /** Loads the user's usage of today from the store; called when a device of theirs connects. */
    async warm(userId: UserId): Promise<void> {
      const day = utcDay(now());
      usedToday(userId, day);
      const stored = await store.usage(userId, day);
      const key = `${userId} ${day}`;
      // Reservations made meanwhile are already in memory; the store has only committed bytes.
      daily.set(key, Math.max(stored, daily.get(key) ?? 0));
    },

    /**
     * Reserves `bytes` of the user's budget for one envelope, or says why not. A reservation
     * that does not end up stored must be given back with `refund`. Synchronous, so a frame's
     * envelopes are checked and queued for commit without yielding.
     */
    reserve(userId: UserId, policy: TierPolicy, lane: number, bytes: number, syncBytes = bytes): { day: string } | QuotaRefusal {
      const t = now();
      const day = utcDay(t);
      if (isCrisisLane(lane)) return { day };
      // `syncBytes`: the whole update an envelope is part of (parts × this part's size).
      if (policy.maxSyncBytes !== null && syncBytes > policy.maxSyncBytes) {
        return {
          code: ErrorCode.QUOTA_EXCEEDED,
          message: `a single sync of ${syncBytes} bytes exceeds this tier's ${policy.maxSyncBytes}; kept on the device until the tier allows it`,
        };
      }
      if (policy.dailyBytes !== null) {
        const used = usedToday(userId, day);
        if (used + bytes > policy.dailyBytes) {
          const nextDay = Math.floor(t / DAY_MS) * DAY_MS + DAY_MS;
          return {
            code: ErrorCode.QUOTA_EXCEEDED,
            message: `daily data limit of ${policy.dailyBytes} bytes reached (${used} used); deferred to the next UTC day`,
            retryAfterMs: nextDay - t,
          };
        }
      }
      if (policy.bandwidthBytesPerSec !== null) {
        const rate = policy.bandwidthBytesPerSec;
        const capacity = rate * BURST_SECONDS;
        const bucket = buckets.get(userId) ?? { tokens: capacity, at: t };
        bucket.tokens = Math.min(capacity, bucket.tokens + ((t - bucket.at) * rate) / 1000);
        bucket.at = t;
        buckets.set(userId, bucket);
        // An envelope larger than the burst may go once the bucket is full, so it is not starved.
        const need = Math.min(bytes, capacity);
        if (bucket.tokens < need) {
          return {
            code: ErrorCode.RATE_LIMITED,
            message: `bandwidth limit of ${rate} bytes/s reached; deferred`,
            retryAfterMs: Math.ceil(((need - bucket.tokens) * 1000) / rate),
          };
        }
        bucket.tokens -= bytes;
      }
      if (policy.dailyBytes !== null) {
        const key = `${userId} ${day}`;
        daily.set(key, (daily.get(key) ?? 0) + bytes);
      }
      return { day };
    },

    /** Gives back a reservation whose envelope was not stored (refused, duplicate). */
    refund(userId: UserId, policy: TierPolicy, day: string, bytes: number): void {
      if (policy.dailyBytes !== null) {
        const key = `${userId} ${day}`;
        daily.set(key, Math.max(0, (daily.get(key) ?? 0) - bytes));
      }
      const bucket = buckets.get(userId);
      if (bucket && policy.bandwidthBytesPerSec !== null) {
        bucket.tokens = Math.min(policy.bandwidthBytesPerSec * BURST_SECONDS, bucket.tokens + bytes);
      }
    },
  };
};
export type QuotaGuard = ReturnType<typeof createQuotaGuard>;
