import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { type Identity, createIdentity, linkNewDevice } from '@keel/client';
import type { TierName, TierState, UserId } from '@keel/engine';
import Database from 'better-sqlite3';
import Stripe from 'stripe';
import { afterEach, describe, expect, it } from 'vitest';
import { type Device, connectDevice, waitFor } from '../support/devices.js';
import { type RelayProcess, removeRelayDir, runRelayCli, startRelayProcess } from '../support/relay-process.js';

/*
 * Payment webhooks against a real relay process: real HTTP on 127.0.0.1, requests signed with
 * the `stripe` package's own test-header helper (the relay verifies by hand, so this proves the
 * two agree), real devices (KeelClient) that must follow every tier change.
 */

// No request ever leaves the machine: only the local signing helper of the SDK is used.
const stripe = new Stripe('sk_test_keel_offline_never_used');
const SECRET = `whsec_${randomBytes(24).toString('hex')}`;
const PRICES = { price_basic: 'basic', price_premium: 'premium' } as const;

// What a real Stripe event carries about a person; none of it may reach disk, log or audit.
const PII = {
  email: 'sam.rivera+keel@example.com',
  name: 'Sam Rivera',
  line1: '12 Harbour Street',
  phone: '+1 503 555 0142',
} as const;
const customerDetails = {
  email: PII.email,
  name: PII.name,
  phone: PII.phone,
  address: { line1: PII.line1, line2: null, city: 'Portland', state: 'OR', postal_code: '97201', country: 'US' },
};

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const BASE_ENV = {
  KEEL_RELAY_WEBHOOK_SECRET: SECRET,
  KEEL_RELAY_PRICE_TIERS: JSON.stringify(PRICES),
};

/** A relay on 127.0.0.1 whose users start on trial, with payment webhooks on. */
const startPaymentsRelay = async (env: Record<string, string> = {}, reuse?: RelayProcess): Promise<RelayProcess> => {
  const relay = await startRelayProcess({
    defaultTier: 'trial',
    env: { ...BASE_ENV, ...env },
    ...(reuse ? { dir: reuse.dir, port: reuse.port } : {}),
  });
  cleanups.push(async () => {
    await relay.stop();
    removeRelayDir(relay.dir);
  });
  return relay;
};

const device = async (url: string, identity: Identity): Promise<Device> => {
  const d = await connectDevice(url, identity);
  cleanups.push(() => d.client.close());
  await d.client.whenSynced();
  return d;
};

/** Two connected devices of one new user. */
const twoDevices = async (relay: RelayProcess) => {
  const identity = await createIdentity();
  const a = await device(relay.url, identity);
  const b = await device(relay.url, await linkNewDevice(identity));
  return { user: identity.user.userId, a, b };
};

const nowSeconds = () => Math.floor(Date.now() / 1000);
let eventCounter = 0;
const eventId = () => `evt_1Keel${Date.now().toString(36)}${(++eventCounter).toString(36)}`;

/** A Stripe event as Stripe sends it: many more fields than the relay reads. */
const stripeEvent = (type: string, object: Record<string, unknown>, created = nowSeconds(), id = eventId()) => ({
  id,
  object: 'event',
  api_version: '2025-03-31.basil',
  created,
  livemode: false,
  pending_webhooks: 1,
  request: { id: `req_${randomBytes(6).toString('hex')}`, idempotency_key: null },
  type,
  data: { object, previous_attributes: {} },
});

const subscriptionObject = (user: UserId, status: string, price: string = 'price_premium', subscription = 'sub_1KeelTest') => ({
  id: subscription,
  object: 'subscription',
  customer: 'cus_KeelTest01',
  status,
  collection_method: 'charge_automatically',
  description: `Subscription for ${PII.name}`,
  metadata: { keel_user: user, support_note: `contact ${PII.email}` },
  items: { object: 'list', data: [{ id: 'si_KeelTest01', object: 'subscription_item', price: { id: price, object: 'price', nickname: 'Keel' }, quantity: 1 }] },
  customer_email: PII.email,
  customer_name: PII.name,
  customer_details: customerDetails,
});

const invoiceObject = (paid: boolean, subscription = 'sub_1KeelTest') => ({
  id: `in_${randomBytes(6).toString('hex')}`,
  object: 'invoice',
  customer: 'cus_KeelTest01',
  customer_email: PII.email,
  customer_name: PII.name,
  customer_phone: PII.phone,
  customer_address: customerDetails.address,
  customer_details: customerDetails,
  status: paid ? 'paid' : 'open',
  attempt_count: 1,
  billing_reason: 'subscription_cycle',
  parent: { type: 'subscription_details', subscription_details: { subscription, metadata: {} } },
  lines: { object: 'list', data: [{ id: 'il_1', description: `1 × Keel Premium for ${PII.name}` }] },
});

interface Delivery {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** POSTs an event the way Stripe does; `header` and `payload` override the honest ones. */
const deliver = async (
  relay: RelayProcess,
  event: unknown,
  options: { secret?: string; timestamp?: number; header?: string | null; payload?: string } = {},
): Promise<Delivery> => {
  const payload = options.payload ?? JSON.stringify(event);
  const header =
    options.header === undefined
      ? stripe.webhooks.generateTestHeaderString({ payload, secret: options.secret ?? SECRET, timestamp: options.timestamp ?? nowSeconds() })
      : options.header;
  const response = await fetch(`${relay.httpUrl}/webhooks/payments`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(header === null ? {} : { 'stripe-signature': header }) },
    body: payload,
    signal: AbortSignal.timeout(5_000),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
};

/** Reads the relay's database (read-only, beside the running relay). */
const query = <T>(relay: RelayProcess, sql: string, ...params: unknown[]): T[] => {
  const db = new Database(relay.dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
};
const graceOf = (relay: RelayProcess, user: UserId) =>
  query<{ ends_at: number; started_at: number; paid_tier: string; failures: number }>(relay, `SELECT * FROM grace_periods WHERE user_id = ?`, user)[0];
const entitlementOf = (relay: RelayProcess, user: UserId) =>
  query<{ tier: TierName; updated_at: number; source: string }>(relay, `SELECT * FROM entitlements WHERE user_id = ?`, user)[0];
const auditRows = (relay: RelayProcess) =>
  query<{ seq: number; actor: string; op: string; user_id: string | null; outcome: string; detail: string }>(relay, `SELECT * FROM audit ORDER BY seq`);
/** Payment-side rows after `seq` (the sync audit trail's logins and commits of the devices are left out). */
const auditAfter = (relay: RelayProcess, seq: number) =>
  auditRows(relay)
    .filter((r) => r.seq > seq && /^(payment|tier|grace)\./.test(r.op))
    .map((r) => `${r.op}:${r.outcome}`);
const lastSeq = (relay: RelayProcess) => auditRows(relay).at(-1)?.seq ?? 0;

const tierNames = (...devices: Device[]) => devices.map((d) => d.client.tier.name);

describe('payment webhooks drive tiers on every device', () => {
  it('upgrades trial → premium on a connected device within 1 s, and it syncs in realtime', async () => {
    const relay = await startPaymentsRelay();
    const { user, a, b } = await twoDevices(relay);
    expect(tierNames(a, b)).toEqual(['trial', 'trial']);
    const seen: TierState[] = [];
    a.client.on('tier', (t) => seen.push(t));

    const started = performance.now();
    const reply = await deliver(relay, stripeEvent('customer.subscription.created', subscriptionObject(user, 'active')));
    expect(reply).toEqual({ status: 200, body: { received: true, outcome: 'tier_changed' } });
    await waitFor(() => a.client.tier.name === 'premium' && b.client.tier.name === 'premium', 1_000, 'premium on both devices');
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(seen.at(-1)?.policy).toMatchObject({ realtime: true, batchWindowMs: 0, crossDevice: true });

    // The policy is in force: a profile edit now reaches the other device at once.
    const profileA = await a.client.open({ class: 'profile', name: 'me' });
    const profileB = await b.client.open({ class: 'profile', name: 'me' });
    profileA.getMap('p').set('pronouns', 'they');
    await waitFor(() => profileB.getMap('p').get('pronouns') === 'they', 1_000, 'realtime edit at B');
    expect(entitlementOf(relay, user)).toMatchObject({ tier: 'premium', source: 'webhook' });
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('puts every device into grace_period on a failed payment, back to premium on recovery, and to trial when a short grace expires', async () => {
    const relay = await startPaymentsRelay({ KEEL_RELAY_GRACE_PREMIUM_MS: '2000', KEEL_RELAY_GRACE_BASIC_MS: '1000', KEEL_RELAY_GRACE_FLOOR_MS: '500' });
    const { user, a, b } = await twoDevices(relay);
    await deliver(relay, stripeEvent('customer.subscription.created', subscriptionObject(user, 'active')));
    await waitFor(() => tierNames(a, b).every((t) => t === 'premium'), 1_000, 'premium');

    // 1st failure: a grace period of the full premium base (2 s here), not a downgrade.
    let failedAt = Date.now();
    expect((await deliver(relay, stripeEvent('invoice.payment_failed', invoiceObject(false)))).body).toMatchObject({ outcome: 'grace_started' });
    await waitFor(() => tierNames(a, b).every((t) => t === 'grace_period'), 1_000, 'grace_period on both devices');
    expect(a.client.tier.policy.crossDevice).toBe(true);
    let grace = graceOf(relay, user)!;
    expect(grace.paid_tier).toBe('premium');
    expect(grace.ends_at - grace.started_at).toBe(2_000);
    expect(Math.abs(grace.started_at - failedAt)).toBeLessThan(1_000);
    // Contract 6: every device learns when the grace period ends (the app shows the date).
    expect(tierNames(a, b)).toEqual(['grace_period', 'grace_period']);
    expect([a.client.tier.graceEndsAt, b.client.tier.graceEndsAt]).toEqual([grace.ends_at, grace.ends_at]);
    // Stripe's past_due update for the same failure neither extends nor shortens it.
    expect((await deliver(relay, stripeEvent('customer.subscription.updated', subscriptionObject(user, 'past_due')))).body).toMatchObject({ outcome: 'grace_active' });
    expect(graceOf(relay, user)!.ends_at).toBe(grace.ends_at);

    // Recovery: the paid tier is back on both devices, the grace is gone.
    expect((await deliver(relay, stripeEvent('invoice.paid', invoiceObject(true)))).body).toMatchObject({ outcome: 'recovered' });
    await waitFor(() => tierNames(a, b).every((t) => t === 'premium'), 1_000, 'premium again');
    expect(graceOf(relay, user)).toBeUndefined();
    expect(a.client.tier.graceEndsAt).toBeUndefined();

    // 2nd failure in the window: half the base (1 s); left to run out, it ends in trial.
    failedAt = Date.now();
    await deliver(relay, stripeEvent('invoice.payment_failed', invoiceObject(false)));
    await waitFor(() => tierNames(a, b).every((t) => t === 'grace_period'), 1_000, 'grace_period again');
    grace = graceOf(relay, user)!;
    expect(grace.ends_at - grace.started_at).toBe(1_000);
    expect(grace.failures).toBe(2);
    await waitFor(() => tierNames(a, b).every((t) => t === 'trial'), 4_000, 'trial after expiry');
    const downgraded = entitlementOf(relay, user)!;
    expect(downgraded).toMatchObject({ tier: 'trial', source: 'grace-expiry' });
    expect(downgraded.updated_at - grace.ends_at).toBeGreaterThanOrEqual(0);
    expect(downgraded.updated_at - grace.ends_at).toBeLessThan(500);
    expect(Date.now() - failedAt).toBeGreaterThanOrEqual(1_000);

    // Data is not locked: the user's documents still sync (crisis at once, on trial too).
    const planA = await a.client.open({ class: 'safety_plan', name: 'main' });
    const planB = await b.client.open({ class: 'safety_plan', name: 'main' });
    planA.getText('reasons').insert(0, 'call my sister');
    await waitFor(() => planB.getText('reasons').toString() === 'call my sister', 1_000, 'crisis edit after downgrade');
    expect(auditRows(relay).filter((r) => r.op === 'tier.set').map((r) => [r.actor, JSON.parse(r.detail).to])).toEqual([
      ['webhook', 'premium'],
      ['webhook', 'grace_period'],
      ['webhook', 'premium'],
      ['webhook', 'grace_period'],
      ['grace-expiry', 'trial'],
    ]);
  });

  it('changes nothing on duplicate, out-of-order, badly signed, stale or malformed deliveries', async () => {
    const relay = await startPaymentsRelay();
    const { user, a } = await twoDevices(relay);
    const created = nowSeconds();
    const upgrade = stripeEvent('customer.subscription.created', subscriptionObject(user, 'active'), created - 30);
    await deliver(relay, upgrade);
    const newer = stripeEvent('customer.subscription.updated', subscriptionObject(user, 'active'), created - 10);
    expect((await deliver(relay, newer)).body).toMatchObject({ outcome: 'unchanged' });
    await waitFor(() => a.client.tier.name === 'premium', 1_000, 'premium');
    const tierFrames: TierState[] = [];
    a.client.on('tier', (t) => tierFrames.push(t));
    const before = lastSeq(relay);
    const appliedBefore = query<{ n: number }>(relay, `SELECT count(*) AS n FROM payment_events`)[0]!.n;
    const failure = stripeEvent('invoice.payment_failed', invoiceObject(false));

    // A retried delivery of an applied event.
    expect(await deliver(relay, upgrade)).toEqual({ status: 200, body: { received: true, outcome: 'duplicate', duplicate: true } });
    // Sent before `newer`, delivered after it.
    const older = stripeEvent('customer.subscription.updated', subscriptionObject(user, 'past_due'), created - 20);
    expect(await deliver(relay, older)).toEqual({ status: 200, body: { received: true, outcome: 'stale', stale: true } });
    // Signed with another secret; signed 10 minutes ago (a replay); a header that is not Stripe's; none.
    const refused = [
      await deliver(relay, failure, { secret: `whsec_${randomBytes(24).toString('hex')}` }),
      await deliver(relay, failure, { timestamp: nowSeconds() - 600 }),
      await deliver(relay, failure, { header: `t=${nowSeconds()},v1=not-a-signature` }),
      await deliver(relay, failure, { header: null }),
      // Signed correctly but not JSON, or JSON that is not a usable event.
      await deliver(relay, null, { payload: `{"id":"evt_1","customer_email":"${PII.email}"` }),
      await deliver(relay, stripeEvent('invoice.payment_failed', { ...invoiceObject(false), parent: { subscription_details: { subscription: PII.email } } })),
      await deliver(relay, stripeEvent('customer.subscription.updated', { id: 'sub_1KeelTest', metadata: { keel_user: user } })),
      await deliver(relay, { ...failure, id: 'not-an-event-id' }),
    ];
    expect(refused.map((r) => [r.status, r.body.error])).toEqual([
      [400, 'BAD_SIGNATURE'],
      [400, 'STALE_TIMESTAMP'],
      [400, 'MALFORMED_SIGNATURE_HEADER'],
      [400, 'MALFORMED_SIGNATURE_HEADER'],
      [400, 'MALFORMED_BODY'],
      [400, 'SCHEMA'],
      [400, 'SCHEMA'],
      [400, 'SCHEMA'],
    ]);
    for (const r of refused) expect(String(r.body.message)).not.toContain(PII.email);

    // Nothing moved: tier, grace, applied events; no tier frame reached the device.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(a.client.tier.name).toBe('premium');
    expect(tierFrames).toEqual([]);
    expect(entitlementOf(relay, user)).toMatchObject({ tier: 'premium', source: 'webhook' });
    expect(graceOf(relay, user)).toBeUndefined();
    // Only the stale event is recorded (so its own retry is a duplicate too).
    expect(query<{ n: number }>(relay, `SELECT count(*) AS n FROM payment_events`)[0]!.n).toBe(appliedBefore + 1);
    // Only deliveries with a valid signature are audited. Unsigned, badly signed and replayed
    // ones can come from anyone, as fast as the network allows: they are counted and logged
    // (rate-limited), never written to the append-only trail.
    expect(auditAfter(relay, before)).toEqual([
      'payment.event:duplicate',
      'payment.event:stale',
      'payment.event:MALFORMED_BODY',
      'payment.event:SCHEMA',
      'payment.event:SCHEMA',
      'payment.event:SCHEMA',
    ]);
    for (const code of ['BAD_SIGNATURE', 'STALE_TIMESTAMP', 'MALFORMED_SIGNATURE_HEADER']) {
      expect(relay.output()).toContain(`"msg":"payment webhook refused","outcome":"${code}"`);
    }

    // The honest delivery of the same failure still works afterwards.
    expect((await deliver(relay, failure)).body).toMatchObject({ outcome: 'grace_started' });
    await waitFor(() => a.client.tier.name === 'grace_period', 1_000, 'grace_period');
  });

  it('acknowledges unknown event types without changing anything, and refuses without a secret or over the size limit', async () => {
    const relay = await startPaymentsRelay();
    const { user, a } = await twoDevices(relay);
    expect(await deliver(relay, stripeEvent('charge.succeeded', { id: 'ch_1', billing_details: customerDetails }))).toEqual({
      status: 200,
      body: { received: true, outcome: 'ignored_type' },
    });
    expect(relay.output()).toContain('"type":"charge.succeeded","outcome":"ignored_type"');
    const huge = stripeEvent('customer.subscription.updated', { ...subscriptionObject(user, 'active'), padding: 'x'.repeat(300 * 1024) });
    expect((await deliver(relay, huge)).status).toBe(413);
    expect(a.client.tier.name).toBe('trial');

    const closed = await startRelayProcess({ defaultTier: 'trial' });
    cleanups.push(async () => {
      await closed.stop();
      removeRelayDir(closed.dir);
    });
    const off = await deliver(closed, stripeEvent('customer.subscription.created', subscriptionObject(user, 'active')));
    expect(off.status).toBe(503);
    expect(off.body).toMatchObject({ error: 'WEBHOOKS_DISABLED', message: expect.stringContaining('KEEL_RELAY_WEBHOOK_SECRET') });
  });
});

describe('grace periods survive relay restarts', () => {
  it.each([
    ['SIGTERM', (r: RelayProcess) => r.stop()],
    ['kill -9', (r: RelayProcess) => r.kill9()],
  ] as const)('a restart (%s) in the middle of a grace period ends it at the same moment', async (_how, stopRelay) => {
    const env = { KEEL_RELAY_GRACE_PREMIUM_MS: '5000', KEEL_RELAY_GRACE_FLOOR_MS: '1000' };
    const relay = await startPaymentsRelay(env);
    const { user, a, b } = await twoDevices(relay);
    await deliver(relay, stripeEvent('customer.subscription.created', subscriptionObject(user, 'active')));
    await deliver(relay, stripeEvent('invoice.payment_failed', invoiceObject(false)));
    await waitFor(() => tierNames(a, b).every((t) => t === 'grace_period'), 1_000, 'grace_period');
    const endsAt = graceOf(relay, user)!.ends_at;

    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await stopRelay(relay);
    const again = await startPaymentsRelay(env, relay);
    expect(Date.now()).toBeLessThan(endsAt);
    // The same end, not a new 5 s from the restart.
    expect(graceOf(again, user)!.ends_at).toBe(endsAt);
    expect(again.output()).toContain('"msg":"grace periods scheduled","count":1');
    // Devices reconnect on their own and still hold grace_period until the end.
    await waitFor(() => a.client.status === 'synced' && b.client.status === 'synced', 5_000, 'devices back');
    expect(tierNames(a, b)).toEqual(['grace_period', 'grace_period']);
    // The end date comes again in the restarted relay's ready frame, read from its database.
    expect([a.client.tier.graceEndsAt, b.client.tier.graceEndsAt]).toEqual([endsAt, endsAt]);

    await waitFor(() => tierNames(a, b).every((t) => t === 'trial'), endsAt - Date.now() + 2_000, 'trial at the end');
    const seenAt = Date.now();
    const downgraded = entitlementOf(again, user)!;
    expect(downgraded).toMatchObject({ tier: 'trial', source: 'grace-expiry' });
    expect(downgraded.updated_at - endsAt).toBeGreaterThanOrEqual(0);
    expect(downgraded.updated_at - endsAt).toBeLessThan(500);
    expect(seenAt - endsAt).toBeLessThan(1_000);
  });
});

describe('privacy and the audit trail', () => {
  it('keeps no email, name, address or phone from payment events in the database, WAL, SHM, log or audit', async () => {
    const relay = await startPaymentsRelay({ KEEL_RELAY_GRACE_PREMIUM_MS: '60000', KEEL_RELAY_GRACE_FLOOR_MS: '1000' });
    const { user } = await twoDevices(relay);
    const events = [
      stripeEvent('customer.subscription.created', subscriptionObject(user, 'active')),
      stripeEvent('invoice.paid', invoiceObject(true)),
      stripeEvent('invoice.payment_failed', invoiceObject(false)),
      stripeEvent('customer.subscription.updated', subscriptionObject(user, 'past_due')),
      stripeEvent('customer.updated', { id: 'cus_KeelTest01', object: 'customer', ...customerDetails }),
      stripeEvent('customer.subscription.updated', subscriptionObject(user, 'active', 'price_basic')),
    ];
    for (const event of events) expect((await deliver(relay, event)).status).toBe(200);
    // Refused deliveries carry the same fields.
    expect((await deliver(relay, events[0], { secret: `whsec_${randomBytes(24).toString('hex')}` })).status).toBe(400);
    expect((await deliver(relay, null, { payload: JSON.stringify(customerDetails) })).status).toBe(400);
    expect(entitlementOf(relay, user)?.tier).toBe('basic');

    // The provider's customer id is not kept either: nothing uses it, so it is one fewer identifier.
    const needles = [...Object.values(PII), 'cus_KeelTest01'].flatMap((value) => [value, value.toLowerCase(), JSON.stringify(value).slice(1, -1)]);
    const scan = (what: string, bytes: Buffer) => {
      for (const needle of needles) expect(bytes.indexOf(Buffer.from(needle, 'utf8')), `${needle} in ${what}`).toBe(-1);
    };
    const files = [relay.dbPath, `${relay.dbPath}-wal`, `${relay.dbPath}-shm`];
    // While running: the commits are in the WAL (and its index in the SHM).
    for (const file of files) expect(existsSync(file), file).toBe(true);
    for (const file of files) scan(file, readFileSync(file));
    const rows = auditRows(relay);
    expect(rows.length).toBeGreaterThanOrEqual(10);
    scan('audit rows', Buffer.from(JSON.stringify(rows)));
    // Events and customers appear as opaque ids only.
    expect(JSON.stringify(rows)).toContain(user);
    scan('relay log', Buffer.from(relay.output()));
    expect(relay.output()).toContain('"msg":"payment event"');

    await relay.stop();
    for (const file of files.filter((f) => existsSync(f))) scan(`${file} after stop`, readFileSync(file));
  });

  it('keel-relay audit verify reports an intact chain, and the first altered row of a tampered one', async () => {
    const relay = await startPaymentsRelay();
    const { user } = await twoDevices(relay);
    await deliver(relay, stripeEvent('customer.subscription.created', subscriptionObject(user, 'active')));
    await deliver(relay, stripeEvent('invoice.payment_failed', invoiceObject(false)));
    await deliver(relay, stripeEvent('invoice.paid', invoiceObject(true)));
    const ok = await runRelayCli(['audit', 'verify', '--db', relay.dbPath]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^audit trail OK: \d+ rows, head [0-9a-f]{64}\n$/);
    await relay.stop();

    // Rows can only be appended; someone with the file drops the guard and rewrites history.
    const db = new Database(relay.dbPath);
    try {
      db.exec(`DROP TRIGGER audit_no_update`);
      db.prepare(`UPDATE audit SET detail = '{"from":"trial","to":"basic"}' WHERE seq = 2`).run();
    } finally {
      db.close();
    }
    const broken = await runRelayCli(['audit', 'verify', '--db', relay.dbPath]);
    expect(broken.code).toBe(1);
    expect(broken.stdout).toContain('BROKEN at seq 2');
    const missing = await runRelayCli(['audit', 'verify', '--db', `${relay.dbPath}.missing`]);
    expect(missing.code).toBe(1);
  });
});
