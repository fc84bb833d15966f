import type { TierName, UserId } from '@keel/engine';
import type { GraceRecord } from '../storage/relay-store.js';
import { type GracePolicy, type PaidTier, graceLengthMs, isPaidTier } from './grace.js';

/**
 * What a payment event says about a user, whatever the provider called it:
 * - `paid`: the subscription is active or trialing, or an invoice was paid (tier: what its
 *   price maps to; null when the price is not mapped);
 * - `failed`: a payment failed (invoice.payment_failed, status past_due or unpaid);
 * - `ended`: the subscription is over (deleted, canceled, incomplete_expired, paused) —
 *   `fallback` is the best tier another live subscription of the user still pays for;
 * - `none`: nothing to change (status incomplete, an unknown status…), with the reason.
 */
export type PaymentSignal =
  | { readonly kind: 'paid'; readonly tier: PaidTier | null }
  | { readonly kind: 'failed' }
  | { readonly kind: 'ended'; readonly fallback: PaidTier | null }
  | { readonly kind: 'none'; readonly reason: string };

/** A user's payment-relevant state: the tier in force and an open grace period, if any. */
export interface PaymentState {
  readonly tier: TierName;
  readonly grace: GraceRecord | undefined;
}

/** What to change; absent fields stay as they are. `outcome` is a stable code for logs, audit and the HTTP answer. */
export interface Transition {
  readonly outcome: string;
  readonly tier?: TierName;
  readonly grace?: { readonly set: GraceRecord } | { readonly clear: UserId };
  /** Record this failure in the history that shortens later grace periods. */
  readonly failure?: boolean;
}

export interface TransitionContext {
  readonly now: number;
  readonly policy: GracePolicy;
  /** Failures that started a grace period within the policy's window before `now`. */
  readonly earlierFailures: number;
}

/** The tier after a subscription ends or a grace period expires: the free tier. */
export const FREE_TIER: TierName = 'trial';

/**
 * The grace-period state machine, pure. States: paid (basic | premium), grace (tier
 * grace_period with an open GraceRecord), free (trial, or anything nobody pays for).
 *
 * - paid signal: restores/sets the paid tier and closes an open grace ('recovered').
 * - failed signal while paid: opens a grace period instead of a downgrade ('grace_started'),
 *   length by {@link graceLengthMs}; during an open grace it changes nothing ('grace_active'):
 *   a further failure (the provider retrying the invoice, the past_due update that comes with
 *   it) neither extends the period nor counts again; while on a free tier it changes nothing
 *   ('not_paid').
 * - ended signal: the fallback tier or the free tier, no grace ('ended').
 * Data is never locked or deleted here: only the tier moves.
 */
export const nextPaymentState = (userId: UserId, state: PaymentState, signal: PaymentSignal, ctx: TransitionContext): Transition => {
  const moveTo = (tier: TierName): { tier?: TierName } => (tier === state.tier ? {} : { tier });
  switch (signal.kind) {
    case 'none':
      return { outcome: signal.reason };
    case 'paid': {
      const target = signal.tier ?? (state.grace && isPaidTier(state.grace.paidTier) ? state.grace.paidTier : null);
      if (target === null) return { outcome: 'unmapped_price' };
      if (state.grace) return { outcome: 'recovered', ...moveTo(target), grace: { clear: userId } };
      return { outcome: target === state.tier ? 'unchanged' : 'tier_changed', ...moveTo(target) };
    }
    case 'failed': {
      if (state.grace) return { outcome: 'grace_active' };
      if (!isPaidTier(state.tier)) return { outcome: 'not_paid' };
      const failures = ctx.earlierFailures + 1;
      const lengthMs = graceLengthMs(ctx.policy, state.tier, failures);
      const grace: GraceRecord = { userId, paidTier: state.tier, startedAt: ctx.now, endsAt: ctx.now + lengthMs, failures };
      return { outcome: 'grace_started', tier: 'grace_period', grace: { set: grace }, failure: true };
    }
    case 'ended': {
      const target = signal.fallback ?? FREE_TIER;
      return { outcome: 'ended', ...moveTo(target), ...(state.grace ? { grace: { clear: userId } } : {}) };
    }
  }
};

/**
 * A grace period's timer fired. Due and still in grace_period: downgrade to the free tier.
 * If an operator moved the user meanwhile, the grace closes without touching the tier.
 */
export const expireGrace = (userId: UserId, state: PaymentState, now: number): Transition => {
  if (!state.grace) return { outcome: 'no_grace' };
  if (state.grace.endsAt > now) return { outcome: 'not_due' };
  if (state.tier !== 'grace_period') return { outcome: 'superseded', grace: { clear: userId } };
  return { outcome: 'expired', tier: FREE_TIER, grace: { clear: userId } };
};
