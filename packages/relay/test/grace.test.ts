import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_TIERS, type UserId, cryptoReady, deriveUserKeys, generateRootKey } from '@keel/engine';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { verifyAuditRows } from '../src/audit/audit-chain.js';
import { createEntitlements } from '../src/entitlements/entitlements.js';
import { DEFAULT_GRACE_POLICY, type GracePolicy, createGraceTimers, graceLengthMs } from '../src/entitlements/grace.js';
import { type PaymentState, expireGrace, nextPaymentState } from '../src/entitlements/payment-state.js';
import { type PaymentProcessor, createPaymentProcessor } from '../src/entitlements/payments.js';
import { silentLogger } from '../src/log.js';
import type { GraceRecord, RelayStore } from '../src/storage/relay-store.js';
import { openSqliteStore } from '../src/storage/sqlite-store.js';
import type { PaymentEvent } from '../src/webhooks/stripe-events.js';
import { createFakeClock } from './fake-clock.js';

const DAY = 24 * 60 * 60 * 1000;
const T0 = Date.UTC(2026, 10, 1);

describe('grace length', () => {
  it('halves per further failure in the window and never drops under the floor', () => {
    const lengths = (tier: 'basic' | 'premium') => [1, 2, 3, 4, 5, 6].map((n) => graceLengthMs(DEFAULT_GRACE_POLICY, tier, n) / DAY);
    expect(lengths('premium')).toEqual([14, 7, 3.5, 1.75, 1, 1]);
    expect(lengths('basic')).toEqual([7, 3.5, 1.75, 1, 1, 1]);
    const short: GracePolicy = { baseMs: { basic: 1_000, premium: 2_000 }, windowMs: 10_000, floorMs: 300 };
    expect([1, 2, 3, 4].map((n) => graceLengthMs(short, 'premium', n))).toEqual([2_000, 1_000, 500, 300]);
    expect(graceLengthMs(short, 'basic', 1_000)).toBe(300);
  });
});

describe('payment state machine', () => {
  const user = 'u_' + 'A'.repeat(43) as UserId;
  const ctx = { now: T0, policy: DEFAULT_GRACE_POLICY, earlierFailures: 0 };
  const grace: GraceRecord = { userId: user, paidTier: 'premium', startedAt: T0 - DAY, endsAt: T0 + 13 * DAY, failures: 1 };
  const premium: PaymentState = { tier: 'premium', grace: undefined };
  const inGrace: PaymentState = { tier: 'grace_period', grace };
  const trial: PaymentState = { tier: 'trial', grace: undefined };

  it('upgrades on payment and changes nothing when already there', () => {
    expect(nextPaymentState(user, trial, { kind: 'paid', tier: 'premium' }, ctx)).toEqual({ outcome: 'tier_changed', tier: 'premium' });
    expect(nextPaymentState(user, premium, { kind: 'paid', tier: 'premium' }, ctx)).toEqual({ outcome: 'unchanged' });
    expect(nextPaymentState(user, trial, { kind: 'paid', tier: null }, ctx)).toEqual({ outcome: 'unmapped_price' });
  });

  it('opens a grace period on a failure while paid, with the length for the failure count', () => {
    expect(nextPaymentState(user, premium, { kind: 'failed' }, ctx)).toEqual({
      outcome: 'grace_started',
      tier: 'grace_period',
      grace: { set: { userId: user, paidTier: 'premium', startedAt: T0, endsAt: T0 + 14 * DAY, failures: 1 } },
      failure: true,
    });
    const third = nextPaymentState(user, { tier: 'basic', grace: undefined }, { kind: 'failed' }, { ...ctx, earlierFailures: 2 });
    expect(third.grace).toEqual({ set: { userId: user, paidTier: 'basic', startedAt: T0, endsAt: T0 + 1.75 * DAY, failures: 3 } });
  });

  it('neither extends nor counts a further failure during a grace period, and gives none on a free tier', () => {
    expect(nextPaymentState(user, inGrace, { kind: 'failed' }, ctx)).toEqual({ outcome: 'grace_active' });
    expect(nextPaymentState(user, trial, { kind: 'failed' }, ctx)).toEqual({ outcome: 'not_paid' });
  });

  it('recovers the paid tier on payment during grace (from the grace record if the price is unmapped)', () => {
    expect(nextPaymentState(user, inGrace, { kind: 'paid', tier: 'premium' }, ctx)).toEqual({ outcome: 'recovered', tier: 'premium', grace: { clear: user } });
    expect(nextPaymentState(user, inGrace, { kind: 'paid', tier: null }, ctx)).toEqual({ outcome: 'recovered', tier: 'premium', grace: { clear: user } });
  });

  it('ends on cancellation without grace, to the free tier or what another subscription pays for', () => {
    expect(nextPaymentState(user, premium, { kind: 'ended', fallback: null }, ctx)).toEqual({ outcome: 'ended', tier: 'trial' });
    expect(nextPaymentState(user, inGrace, { kind: 'ended', fallback: null }, ctx)).toEqual({ outcome: 'ended', tier: 'trial', grace: { clear: user } });
    expect(nextPaymentState(user, premium, { kind: 'ended', fallback: 'basic' }, ctx)).toEqual({ outcome: 'ended', tier: 'basic' });
  });

  it('expires a due grace to trial, only when due, and leaves an operator’s tier alone', () => {
    expect(expireGrace(user, inGrace, grace.endsAt - 1)).toEqual({ outcome: 'not_due' });
    expect(expireGrace(user, inGrace, grace.endsAt)).toEqual({ outcome: 'expired', tier: 'trial', grace: { clear: user } });
    expect(expireGrace(user, { tier: 'premium', grace }, grace.endsAt)).toEqual({ outcome: 'superseded', grace: { clear: user } });
    expect(expireGrace(user, premium, T0)).toEqual({ outcome: 'no_grace' });
  });
});

describe('grace timers', () => {
  it('fire at the absolute end, also past the 24.8-day limit of one Node timer', async () => {
    const clock = createFakeClock(T0);
    const fired: [UserId, number][] = [];
    const timers = createGraceTimers(clock.timers, (userId) => fired.push([userId, clock.now()]));
    const a = 'u_' + 'a'.repeat(43) as UserId;
    const b = 'u_' + 'b'.repeat(43) as UserId;
    timers.schedule(a, T0 + 40 * DAY);
    timers.schedule(b, T0 + 1_000);
    timers.schedule(b, T0 + 2_000); // rescheduling replaces
    await clock.advance(39 * DAY);
    expect(fired).toEqual([[b, T0 + 2_000]]);
    await clock.advance(DAY);
    expect(fired).toEqual([
      [b, T0 + 2_000],
      [a, T0 + 40 * DAY],
    ]);
    timers.schedule(a, T0); // already passed: fires at once
    await clock.advance(0);
    expect(fired).toHaveLength(3);
    timers.schedule(b, T0 + 50 * DAY);
    timers.cancelAll();
    expect(clock.pending()).toBe(0);
  });
});

describe('payment processor (SQLite, fake clock)', () => {
  beforeAll(async () => {
    await cryptoReady();
  });

  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  const policy: GracePolicy = DEFAULT_GRACE_POLICY;
  const priceTiers = { price_basic: 'basic', price_premium: 'premium' } as const;

  /** A processor on a store at `path` (a new temp file unless given), driven by `clock`. */
  const setUp = async (clock: ReturnType<typeof createFakeClock>, path?: string) => {
    let file = path;
    if (!file) {
      const dir = await mkdtemp(join(tmpdir(), 'keel-grace-'));
      cleanups.push(() => rm(dir, { recursive: true, force: true }));
      file = join(dir, 'relay.db');
    }
    const store: RelayStore = openSqliteStore({ path: file });
    const entitlements = createEntitlements(store, DEFAULT_TIERS, 'trial', clock.now);
    const processor: PaymentProcessor = createPaymentProcessor({ store, entitlements, log: silentLogger, policy, priceTiers, timers: clock.timers });
    let closed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      await processor.close();
      await store.close();
    };
    cleanups.push(close);
    await processor.start();
    const tier = async (userId: UserId) => (await entitlements.tierOf(userId)).name;
    return { store, entitlements, processor, tier, close, path: file };
  };

  let nextEvent = 0;
  const newUser = () => deriveUserKeys(generateRootKey()).userId;
  const sub = (userId: UserId | string | null, status: string, createdMs: number, over: Partial<Extract<PaymentEvent, { kind: 'subscription' }>> = {}): PaymentEvent => ({
    kind: 'subscription',
    id: `evt_${++nextEvent}`,
    type: 'customer.subscription.updated',
    createdMs,
    deleted: false,
    subscriptionId: 'sub_1',
    status,
    priceId: 'price_premium',
    keelUser: userId,
    ...over,
  });
  const invoice = (paid: boolean, createdMs: number, subscriptionId: string | null = 'sub_1'): PaymentEvent => ({
    kind: 'invoice',
    id: `evt_${++nextEvent}`,
    type: paid ? 'invoice.paid' : 'invoice.payment_failed',
    createdMs,
    paid,
    subscriptionId,
  });

  it('upgrades, opens a grace period on failure, keeps it through further failures, and expires it to trial at its end', async () => {
    const clock = createFakeClock(T0);
    const { processor, tier, store } = await setUp(clock);
    const user = newUser();
    expect(await processor.applyEvent(sub(user, 'active', clock.now()))).toMatchObject({ outcome: 'tier_changed', userId: user });
    expect(await tier(user)).toBe('premium');

    expect((await processor.applyEvent(invoice(false, clock.now()))).outcome).toBe('grace_started');
    expect(await tier(user)).toBe('grace_period');
    const grace = await store.getGrace(user);
    expect(grace).toEqual({ userId: user, paidTier: 'premium', startedAt: T0, endsAt: T0 + 14 * DAY, failures: 1 });

    await clock.advance(DAY, () => processor.idle());
    // Stripe's retry and the past_due update: no extension.
    expect((await processor.applyEvent(invoice(false, clock.now()))).outcome).toBe('grace_active');
    expect((await processor.applyEvent(sub(user, 'past_due', clock.now()))).outcome).toBe('grace_active');
    expect((await store.getGrace(user))?.endsAt).toBe(T0 + 14 * DAY);

    await clock.advance(13 * DAY - 1, () => processor.idle());
    expect(await tier(user)).toBe('grace_period');
    await clock.advance(1, () => processor.idle());
    expect(await tier(user)).toBe('trial');
    expect((await store.getEntitlement(user))?.source).toBe('grace-expiry');
    expect((await store.getEntitlement(user))?.updatedAt).toBe(T0 + 14 * DAY);
    expect(await store.getGrace(user)).toBeUndefined();

    const audit = await store.readAudit(0, 100);
    expect(verifyAuditRows(audit).ok).toBe(true);
    expect(audit.map((r) => `${r.actor}:${r.op}:${r.outcome}`)).toEqual([
      'webhook:payment.event:tier_changed',
      'webhook:tier.set:applied',
      'webhook:payment.event:grace_started',
      'webhook:grace.start:started',
      'webhook:tier.set:applied',
      'webhook:payment.event:grace_active',
      'webhook:payment.event:grace_active',
      'grace-expiry:grace.end:expired',
      'grace-expiry:tier.set:applied',
    ]);
  });

  it('restores the paid tier on recovery and cancels the timer', async () => {
    const clock = createFakeClock(T0);
    const { processor, tier, store } = await setUp(clock);
    const user = newUser();
    await processor.applyEvent(sub(user, 'active', clock.now(), { priceId: 'price_basic' }));
    await processor.applyEvent(invoice(false, clock.now()));
    expect((await store.getGrace(user))?.endsAt).toBe(T0 + 7 * DAY);
    await clock.advance(DAY, () => processor.idle());
    expect((await processor.applyEvent(invoice(true, clock.now()))).outcome).toBe('recovered');
    expect(await tier(user)).toBe('basic');
    expect(await store.getGrace(user)).toBeUndefined();
    expect(clock.pending()).toBe(0);
    await clock.advance(30 * DAY, () => processor.idle());
    expect(await tier(user)).toBe('basic');
  });

  it('shortens each further grace period in the window and forgets failures older than it', async () => {
    const clock = createFakeClock(T0);
    const { processor, store } = await setUp(clock);
    const user = newUser();
    const lengths: number[] = [];
    await processor.applyEvent(sub(user, 'active', clock.now()));
    for (let i = 0; i < 5; i++) {
      await processor.applyEvent(invoice(false, clock.now()));
      const grace = (await store.getGrace(user))!;
      lengths.push((grace.endsAt - grace.startedAt) / DAY);
      await clock.advance(DAY / 2, () => processor.idle());
      await processor.applyEvent(invoice(true, clock.now()));
      await clock.advance(DAY / 2, () => processor.idle());
    }
    expect(lengths).toEqual([14, 7, 3.5, 1.75, 1]);
    // 90 days on, the history is out of the window: a full period again.
    await clock.advance(policy.windowMs, () => processor.idle());
    await processor.applyEvent(invoice(false, clock.now()));
    const grace = (await store.getGrace(user))!;
    expect((grace.endsAt - grace.startedAt) / DAY).toBe(14);
  });

  it('neither loses nor extends a grace period across a restart; an end that passed while down applies at once', async () => {
    const clock = createFakeClock(T0);
    const first = await setUp(clock);
    const user = newUser();
    const other = newUser();
    await first.processor.applyEvent(sub(user, 'active', clock.now()));
    await first.processor.applyEvent(sub(other, 'active', clock.now(), { subscriptionId: 'sub_2', priceId: 'price_basic' }));
    await first.processor.applyEvent(invoice(false, clock.now()));
    await clock.advance(6 * DAY, () => first.processor.idle());
    await first.processor.applyEvent(invoice(false, clock.now(), 'sub_2'));
    await first.close();
    expect(clock.pending()).toBe(0);

    // Down for 3 days (now day 9): both periods are still open and scheduled again for their ends.
    await clock.advance(3 * DAY);
    const second = await setUp(clock, first.path);
    expect(clock.pending()).toBe(2);
    await clock.advance(3 * DAY, () => second.processor.idle());
    expect([await second.tier(user), await second.tier(other)]).toEqual(['grace_period', 'grace_period']);
    await second.close();

    // Down again until 1 ms before the premium end (day 14): the basic end (day 13) passed meanwhile
    // and applies as soon as the relay is back; the premium one still ends at day 14 exactly.
    await clock.advance(2 * DAY - 1);
    const third = await setUp(clock, first.path);
    await clock.advance(0, () => third.processor.idle());
    expect(await third.tier(other)).toBe('trial');
    expect(await third.tier(user)).toBe('grace_period');
    await clock.advance(1, () => third.processor.idle());
    expect(await third.tier(user)).toBe('trial');
    expect((await third.store.getEntitlement(user))?.updatedAt).toBe(T0 + 14 * DAY);
    expect(await third.store.listGraces()).toEqual([]);
  });

  it('applies each event id once and ignores an event older than the subscription’s state', async () => {
    const clock = createFakeClock(T0);
    const { processor, tier, store } = await setUp(clock);
    const user = newUser();
    const upgrade = sub(user, 'active', T0 + 10_000);
    expect((await processor.applyEvent(upgrade)).outcome).toBe('tier_changed');
    expect(await processor.applyEvent(upgrade)).toEqual({ outcome: 'duplicate', duplicate: true });
    // Sent earlier, delivered later: a past_due from before the subscription became active.
    expect(await processor.applyEvent(sub(user, 'past_due', T0 + 5_000))).toMatchObject({ outcome: 'stale', stale: true });
    expect(await processor.applyEvent(invoice(false, T0 + 9_000))).toMatchObject({ outcome: 'stale', stale: true });
    expect(await tier(user)).toBe('premium');
    expect(await store.getGrace(user)).toBeUndefined();
    // Same second is not older.
    expect((await processor.applyEvent(invoice(false, T0 + 10_000))).outcome).toBe('grace_started');
  });

  it('moves to trial without grace on cancellation or deletion, or to what another subscription pays for', async () => {
    const clock = createFakeClock(T0);
    const { processor, tier, store } = await setUp(clock);
    const user = newUser();
    await processor.applyEvent(sub(user, 'active', clock.now()));
    await processor.applyEvent(sub(user, 'active', clock.now(), { subscriptionId: 'sub_b', priceId: 'price_basic' }));
    expect(await tier(user)).toBe('premium');
    expect((await processor.applyEvent(sub(user, 'canceled', clock.now(), { type: 'customer.subscription.deleted', deleted: true }))).outcome).toBe('ended');
    expect(await tier(user)).toBe('basic');
    await processor.applyEvent(invoice(false, clock.now(), 'sub_b'));
    expect(await tier(user)).toBe('grace_period');
    expect((await processor.applyEvent(sub(user, 'canceled', clock.now(), { subscriptionId: 'sub_b', priceId: 'price_basic' }))).outcome).toBe('ended');
    expect(await tier(user)).toBe('trial');
    expect(await store.getGrace(user)).toBeUndefined();
    expect(clock.pending()).toBe(0);
  });

  it('acknowledges and records events it cannot link to a Keel user or tier, changing no tier', async () => {
    const clock = createFakeClock(T0);
    const { processor, tier, store } = await setUp(clock);
    const user = newUser();
    expect((await processor.applyEvent(sub(null, 'active', T0, { subscriptionId: 'sub_x' }))).outcome).toBe('no_keel_user');
    expect((await processor.applyEvent(sub('someone@example.com', 'active', T0, { subscriptionId: 'sub_y' }))).outcome).toBe('bad_keel_user');
    expect((await processor.applyEvent(invoice(true, T0, 'sub_unknown'))).outcome).toBe('unknown_subscription');
    expect((await processor.applyEvent(invoice(true, T0, null))).outcome).toBe('no_subscription');
    expect((await processor.applyEvent(sub(user, 'active', T0, { priceId: 'price_unmapped' }))).outcome).toBe('unmapped_price');
    expect((await processor.applyEvent(sub(user, 'incomplete', T0 + 1))).outcome).toBe('incomplete');
    expect(await tier(user)).toBe('trial');
    // A subscription cannot be moved to another user.
    expect((await processor.applyEvent(sub(newUser(), 'active', T0 + 2))).outcome).toBe('user_mismatch');
    expect((await store.getSubscription('sub_1'))?.userId).toBe(user);
    expect(await store.getSubscription('sub_x')).toBeUndefined();
    const unknown: PaymentEvent = { kind: 'unknown', id: 'evt_other', type: 'charge.succeeded', createdMs: T0 };
    expect((await processor.applyEvent(unknown)).outcome).toBe('ignored_type');
    const audit = await store.readAudit(0, 100);
    expect(audit.every((r) => r.op === 'payment.event')).toBe(true);
    expect(audit.some((r) => r.detail.includes('@'))).toBe(false);
  });
});
