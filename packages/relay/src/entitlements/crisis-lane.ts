import { type DeviceId, ErrorCode, type UserId } from '@keel/engine';
import type { Logger } from '../log.js';
import type { QuotaRefusal } from './quota.js';
import { utcDay } from './quota.js';

const DAY_MS = 86_400_000;

export interface CrisisLaneOptions {
  /** Crisis-lane bytes of one user (all devices) in one UTC day past which the volume is flagged as an anomaly. */
  readonly anomalyBytes: number;
  /**
   * Crisis-lane bytes of one device in one UTC day past which further crisis-lane envelopes are
   * deferred to the next day. A disk-safety bound far above any honest use (a safety plan is a
   * few KiB), not a product limit: without it a stolen or hostile device could fill the relay's
   * disk through the one lane no tier limits.
   */
  readonly ceilingBytes: number;
  /** Crisis envelopes a user may send on the immediate path in a burst, and per second after it. */
  readonly fastBurst: number;
  readonly fastPerSecond: number;
  readonly now: () => number;
  readonly log: Logger;
  /** A user passed `anomalyBytes` today over all their devices (told once per user per UTC day; `device` sent the last envelope). */
  readonly onAnomaly?: (user: UserId, device: DeviceId, bytes: number) => void;
}

interface Bucket {
  tokens: number;
  at: number;
}

/**
 * The relay's accounting of crisis-lane traffic. The lane is declared by the sending device and
 * the relay cannot check it (the class is hidden), so: it is never limited by a tier, but it is
 * metered per device and per UTC day, flagged when unusually large, held to a disk-safety
 * ceiling, and given the immediate path (verified and committed as it arrives, ahead of the
 * work queue) only within a per-user budget — past it, a user's crisis frames wait their turn
 * among other users' crisis work instead of taking the event loop.
 */
export const createCrisisLane = (options: CrisisLaneOptions) => {
  const { now, log } = options;
  let today = '';
  const used = new Map<DeviceId, number>();
  /** Crisis-lane bytes of each user today, over all their devices: what the anomaly is judged on. */
  const usedByUser = new Map<UserId, number>();
  const flagged = new Set<UserId>();
  const buckets = new Map<UserId, Bucket>();

  const roll = (day: string): void => {
    if (day === today) return;
    today = day;
    used.clear();
    usedByUser.clear();
    flagged.clear();
  };

  return {
    /** Meters a crisis-lane envelope of `bytes`; refuses only past the ceiling. */
    reserve(user: UserId, device: DeviceId, bytes: number): { day: string } | QuotaRefusal {
      const t = now();
      const day = utcDay(t);
      roll(day);
      const before = used.get(device) ?? 0;
      if (before + bytes > options.ceilingBytes) {
        log.log('warn', 'crisis lane ceiling reached', { user, device, bytes: before });
        return {
          code: ErrorCode.QUOTA_EXCEEDED,
          message: `this device sent ${before} crisis-lane bytes today, the relay's safety ceiling; deferred to the next UTC day`,
          retryAfterMs: Math.floor(t / DAY_MS) * DAY_MS + DAY_MS - t,
        };
      }
      used.set(device, before + bytes);
      // Judged per user (a person types on one device at a time; many devices do not dilute it), told once a day.
      const userBytes = (usedByUser.get(user) ?? 0) + bytes;
      usedByUser.set(user, userBytes);
      if (userBytes > options.anomalyBytes && !flagged.has(user)) {
        flagged.add(user);
        log.log('warn', 'crisis lane volume anomaly', { user, device, bytes: userBytes, threshold: options.anomalyBytes });
        options.onAnomaly?.(user, device, userBytes);
      }
      return { day };
    },

    /** Gives back a metered envelope that was not stored (refused, duplicate). */
    refund(user: UserId, device: DeviceId, day: string, bytes: number): void {
      if (day !== today) return;
      used.set(device, Math.max(0, (used.get(device) ?? 0) - bytes));
      usedByUser.set(user, Math.max(0, (usedByUser.get(user) ?? 0) - bytes));
    },

    /** Takes `envelopes` from the user's immediate-path budget; false when it is spent. */
    takeFastPath(user: UserId, envelopes: number): boolean {
      const t = now();
      const capacity = options.fastBurst;
      const bucket = buckets.get(user) ?? { tokens: capacity, at: t };
      bucket.tokens = Math.min(capacity, bucket.tokens + ((t - bucket.at) * options.fastPerSecond) / 1000);
      bucket.at = t;
      buckets.set(user, bucket);
      if (bucket.tokens < envelopes) return false;
      bucket.tokens -= envelopes;
      return true;
    },

    /** The user has no connection left: forget their budget (it refills to full anyway). */
    forgetUser(user: UserId): void {
      buckets.delete(user);
    },
  };
};
export type CrisisLane = ReturnType<typeof createCrisisLane>;
