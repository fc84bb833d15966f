import type { TierMatrix, TierName, TierState, UserId } from '@keel/engine';
import type { AuditDraft, PaymentWrite, RelayStore, TierSource } from '../storage/relay-store.js';

export type TierListener = (userId: UserId, state: TierState) => void;

/**
 * The relay's authority on each user's tier: reads it from the store (cached per user), sets it
 * for operators and payment webhooks, and tells listeners at once so online devices follow.
 */
export interface Entitlements {
  readonly matrix: TierMatrix;
  tierOf(userId: UserId): Promise<TierState>;
  /**
   * Sets the tier, appends a `tier.set` audit row, and tells listeners. `payment` (a webhook's
   * or a grace expiry's bookkeeping) is written in the same store transaction.
   */
  setTier(userId: UserId, tier: TierName, source: TierSource, payment?: PaymentWrite): Promise<{ previous: TierState; current: TierState }>;
  onChange(listener: TierListener): void;
}

/** `defaultTier` is what a user without any entitlement gets (the free tier unless configured). */
export const createEntitlements = (store: RelayStore, matrix: TierMatrix, defaultTier: TierName, now: () => number): Entitlements => {
  const cache = new Map<UserId, TierState>();
  const listeners: TierListener[] = [];
  const stateOf = (tier: TierName, since: number, graceEndsAt?: number): TierState => ({
    name: tier,
    policy: matrix[tier],
    since,
    ...(tier === 'grace_period' && graceEndsAt !== undefined ? { graceEndsAt } : {}),
  });
  /** The end of the user's open grace period, if the store holds one (an operator's grace_period has none). */
  const graceEndOf = async (userId: UserId, tier: TierName): Promise<number | undefined> =>
    tier === 'grace_period' ? (await store.getGrace(userId))?.endsAt : undefined;

  const tierOf = async (userId: UserId): Promise<TierState> => {
    const cached = cache.get(userId);
    if (cached) return cached;
    const record = await store.getEntitlement(userId);
    const state = record ? stateOf(record.tier, record.updatedAt, await graceEndOf(userId, record.tier)) : stateOf(defaultTier, 0);
    cache.set(userId, state);
    return state;
  };

  return {
    matrix,
    tierOf,
    async setTier(userId, tier, source, payment) {
      const previous = await tierOf(userId);
      const audit: AuditDraft = {
        actor: source,
        op: 'tier.set',
        userId,
        outcome: 'applied',
        detail: { from: previous.name, to: tier, event: payment?.event?.id ?? null },
      };
      const record = await store.setEntitlement(userId, tier, now(), source, { ...payment, audit: [...(payment?.audit ?? []), audit] });
      // The grace record is written in the same transaction as the tier, so it is there to read.
      const current = stateOf(record.tier, record.updatedAt, await graceEndOf(userId, record.tier));
      cache.set(userId, current);
      for (const listener of listeners) listener(userId, current);
      return { previous, current };
    },
    onChange(listener) {
      listeners.push(listener);
    },
  };
};
