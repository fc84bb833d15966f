import { type TierName, type UserId, UserIdSchema } from '@keel/engine';
import type { Logger } from '../log.js';
import type { AuditDraft, PaymentWrite, RelayStore, SubscriptionRecord, TierSource } from '../storage/relay-store.js';
import type { PaymentEvent } from '../webhooks/stripe-events.js';
import type { Entitlements } from './entitlements.js';
import { type GracePolicy, type PaidTier, type TimerDeps, betterPaidTier, createGraceTimers, systemTimers } from './grace.js';
import { type PaymentSignal, type Transition, expireGrace, nextPaymentState } from './payment-state.js';

/** Subscription statuses (Stripe's) that pay for the price's tier. */
const LIVE = new Set(['active', 'trialing']);
/** Statuses of a subscription whose payment failed and is being retried. */
const FAILING = new Set(['past_due', 'unpaid']);
/** Statuses of a subscription that no longer pays for anything. */
const ENDED = new Set(['canceled', 'incomplete_expired', 'paused']);

export interface PaymentProcessorDeps {
  readonly store: RelayStore;
  readonly entitlements: Entitlements;
  readonly log: Logger;
  readonly policy: GracePolicy;
  /** Price (or legacy plan) id → the paid tier it buys. */
  readonly priceTiers: Readonly<Record<string, PaidTier>>;
  /** Clock and timers; the system's unless a test injects a fake. */
  readonly timers?: TimerDeps;
}

/** What became of one event: a stable outcome code, and the flags the HTTP answer carries. */
export interface EventResult {
  readonly outcome: string;
  readonly duplicate?: true;
  readonly stale?: true;
  readonly userId?: UserId;
}

export interface PaymentProcessor {
  /** Schedules every open grace period from the store; one already over ends at once. */
  start(): Promise<void>;
  /** Applies a verified event exactly once (serialized with every other event and expiry). */
  applyEvent(event: PaymentEvent): Promise<EventResult>;
  /** Resolves when every event and expiry queued so far is done. */
  idle(): Promise<void>;
  /** Stops the timers and waits for the event or expiry in progress. */
  close(): Promise<void>;
}

/**
 * Turns payment events into tier changes and grace periods (payment-state.ts decides; this
 * reads the state, writes each outcome in one transaction and keeps the timers). Every tier
 * change goes through `entitlements.setTier`, so online devices hear of it at once.
 */
export const createPaymentProcessor = (deps: PaymentProcessorDeps): PaymentProcessor => {
  const { store, entitlements, log, policy } = deps;
  const timers = deps.timers ?? systemTimers;
  // A Map, so a price id like "__proto__" cannot reach Object.prototype.
  const priceTiers = new Map(Object.entries(deps.priceTiers));
  let tail: Promise<unknown> = Promise.resolve();
  let closed = false;

  /** One event or expiry at a time: read-decide-write never interleaves. */
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(() => {
      if (closed) throw new Error('payment processor is closed');
      return fn();
    });
    tail = run.catch(() => undefined);
    return run;
  };

  const graceTimers = createGraceTimers(timers, (userId) => {
    serial(() => expire(userId)).catch((error: unknown) => {
      if (closed) return;
      log.log('error', 'grace expiry failed', { user: userId, error: error instanceof Error ? error.message : String(error) });
      // The end time is durable: try again shortly rather than leave the user in grace.
      graceTimers.schedule(userId, timers.now() + 5_000);
    });
  });

  const stateOf = async (userId: UserId) => ({ tier: (await entitlements.tierOf(userId)).name, grace: await store.getGrace(userId) });

  const graceAudit = (userId: UserId, transition: Transition, actor: TierSource): AuditDraft[] => {
    if (!transition.grace) return [];
    if ('set' in transition.grace) {
      const { paidTier, endsAt, startedAt, failures } = transition.grace.set;
      return [{ actor, op: 'grace.start', userId, outcome: 'started', detail: { paidTier, endsAt, lengthMs: endsAt - startedAt, failures } }];
    }
    return [{ actor, op: 'grace.end', userId, outcome: transition.outcome, detail: {} }];
  };

  /** Writes a transition (and `write`) in one transaction, then moves the user's timer. */
  const commit = async (userId: UserId, transition: Transition, actor: TierSource, now: number, write: PaymentWrite): Promise<void> => {
    const full: PaymentWrite = {
      ...write,
      ...(transition.grace ? { grace: transition.grace } : {}),
      // The history only matters within the window: older failures are forgotten as new ones come.
      ...(transition.failure ? { failure: { userId, at: now, forgetBefore: now - policy.windowMs } } : {}),
      audit: [...(write.audit ?? []), ...graceAudit(userId, transition, actor)],
    };
    if (transition.tier !== undefined) await entitlements.setTier(userId, transition.tier, actor, full);
    else await store.commitPayment(full, now);
    if (transition.grace) {
      if ('set' in transition.grace) graceTimers.schedule(userId, transition.grace.set.endsAt);
      else graceTimers.cancel(userId);
    }
  };

  const expire = async (userId: UserId): Promise<void> => {
    const now = timers.now();
    const state = await stateOf(userId);
    const transition = expireGrace(userId, state, now);
    if (transition.outcome === 'no_grace') return;
    if (transition.outcome === 'not_due') {
      graceTimers.schedule(userId, state.grace!.endsAt);
      return;
    }
    await commit(userId, transition, 'grace-expiry', now, {});
    log.log('info', 'grace period ended', { user: userId, outcome: transition.outcome, tier: transition.tier ?? state.tier });
  };

  const tierOfPrice = (priceId: string | null): PaidTier | null => (priceId === null ? null : (priceTiers.get(priceId) ?? null));

  /** The best tier the user's other live subscriptions pay for. */
  const otherLiveTier = async (userId: UserId, subscriptionId: string): Promise<PaidTier | null> => {
    let best: PaidTier | null = null;
    for (const sub of await store.listSubscriptions(userId)) {
      if (sub.subscriptionId === subscriptionId || !LIVE.has(sub.status) || sub.tier === null) continue;
      best = betterPaidTier(best, sub.tier as PaidTier);
    }
    return best;
  };

  const signalOf = async (event: PaymentEvent, sub: SubscriptionRecord): Promise<PaymentSignal> => {
    const paidTier = sub.tier as PaidTier | null;
    if (event.kind === 'subscription') {
      if (event.deleted || ENDED.has(sub.status)) return { kind: 'ended', fallback: await otherLiveTier(sub.userId, sub.subscriptionId) };
      if (LIVE.has(sub.status)) return { kind: 'paid', tier: betterPaidTier(paidTier, await otherLiveTier(sub.userId, sub.subscriptionId)) };
      if (FAILING.has(sub.status)) return { kind: 'failed' };
      return { kind: 'none', reason: sub.status === 'incomplete' ? 'incomplete' : 'unhandled_status' };
    }
    if (ENDED.has(sub.status)) return { kind: 'none', reason: 'subscription_ended' };
    if (event.kind === 'invoice' && event.paid) {
      return { kind: 'paid', tier: betterPaidTier(paidTier, await otherLiveTier(sub.userId, sub.subscriptionId)) };
    }
    return { kind: 'failed' };
  };

  const apply = async (event: PaymentEvent): Promise<EventResult> => {
    const now = timers.now();
    const eventDetail = { event: event.id, type: event.type };
    const auditOf = (userId: UserId | null, outcome: string, extra: Record<string, string | null> = {}): AuditDraft => ({
      actor: 'webhook',
      op: 'payment.event',
      userId,
      outcome,
      detail: { ...eventDetail, ...extra },
    });
    /** An event that changes no tier: recorded (so a retry is a duplicate) and audited. */
    const settle = async (userId: UserId | null, outcome: string, flags: { stale?: true } = {}): Promise<EventResult> => {
      await store.commitPayment({ event: { id: event.id, type: event.type, outcome }, audit: [auditOf(userId, outcome)] }, now);
      log.log('info', 'payment event', { event: event.id, type: event.type, user: userId, outcome });
      return { outcome, ...flags, ...(userId ? { userId } : {}) };
    };

    if (event.kind === 'unknown') {
      // Acknowledged and audited, not recorded: the provider may send many types the relay ignores.
      await store.appendAudit([auditOf(null, 'ignored_type')], now);
      log.log('info', 'payment event ignored', { type: event.type, outcome: 'ignored_type' });
      return { outcome: 'ignored_type' };
    }
    if (await store.paymentEventSeen(event.id)) {
      await store.appendAudit([auditOf(null, 'duplicate')], now);
      log.log('info', 'payment event', { event: event.id, type: event.type, outcome: 'duplicate' });
      return { outcome: 'duplicate', duplicate: true };
    }

    const stored = event.subscriptionId === null ? undefined : await store.getSubscription(event.subscriptionId);
    let userId: UserId;
    if (event.kind === 'subscription') {
      if (event.keelUser === null) return settle(null, 'no_keel_user');
      const user = UserIdSchema.safeParse(event.keelUser);
      if (!user.success) return settle(null, 'bad_keel_user');
      // Re-pointing a subscription at another user would move a payment between people.
      if (stored && stored.userId !== user.data) return settle(stored.userId, 'user_mismatch');
      userId = user.data;
    } else {
      if (event.subscriptionId === null) return settle(null, 'no_subscription');
      if (!stored) return settle(null, 'unknown_subscription');
      userId = stored.userId;
    }
    // Providers do not promise order: an event older than what the subscription last heard is history.
    if (stored && event.createdMs < stored.eventAt) return settle(userId, 'stale', { stale: true });

    const sub: SubscriptionRecord =
      event.kind === 'subscription'
        ? {
            subscriptionId: event.subscriptionId,
            userId,
            priceId: event.priceId,
            tier: tierOfPrice(event.priceId) as TierName | null,
            status: event.status,
            eventAt: event.createdMs,
            updatedAt: now,
          }
        : { ...stored!, eventAt: Math.max(stored!.eventAt, event.createdMs), updatedAt: now };
    const signal = await signalOf(event, sub);
    const state = await stateOf(userId);
    const earlierFailures = await store.countPaymentFailures(userId, now - policy.windowMs);
    const transition = nextPaymentState(userId, state, signal, { now, policy, earlierFailures });
    await commit(userId, transition, 'webhook', now, {
      event: { id: event.id, type: event.type, outcome: transition.outcome },
      subscription: sub,
      audit: [auditOf(userId, transition.outcome, { subscription: sub.subscriptionId, status: sub.status, price: sub.priceId })],
    });
    log.log('info', 'payment event', { event: event.id, type: event.type, user: userId, outcome: transition.outcome });
    return { outcome: transition.outcome, userId };
  };

  return {
    async start() {
      for (const grace of await store.listGraces()) graceTimers.schedule(grace.userId, grace.endsAt);
      log.log('info', 'grace periods scheduled', { count: graceTimers.size });
    },
    applyEvent: (event) => serial(() => apply(event)),
    async idle() {
      await tail;
    },
    async close() {
      closed = true;
      graceTimers.cancelAll();
      await tail;
    },
  };
};
