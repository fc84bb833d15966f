import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseSignatureHeader, verifyStripeSignature } from '../src/webhooks/signature.js';
import { parseStripeEvent } from '../src/webhooks/stripe-events.js';
import { WebhookRejection } from '../src/webhooks/webhook-codes.js';

const SECRET = 'whsec_test_0123456789abcdef0123456789';
const NOW = 1_790_000_000;
const body = Buffer.from(JSON.stringify({ id: 'evt_1', object: 'event', type: 'invoice.paid', created: NOW, data: { object: {} } }));

/** Stripe's scheme, by hand: hex HMAC-SHA256 over `${t}.${body}`. */
const sign = (payload: Buffer | string, t: number, secret = SECRET): string =>
  createHmac('sha256', secret).update(`${t}.`).update(payload).digest('hex');

const outcome = (header: string | undefined, now = NOW, payload = body) => {
  const check = verifyStripeSignature(payload, header, SECRET, now, 300);
  return check.ok ? 'ok' : check.code;
};

describe('Stripe-Signature verification', () => {
  it('accepts a body signed with the endpoint secret and returns its timestamp', () => {
    expect(verifyStripeSignature(body, `t=${NOW},v1=${sign(body, NOW)}`, SECRET, NOW, 300)).toEqual({ ok: true, timestamp: NOW });
  });

  it('accepts when any v1 matches (secret rotation), ignoring other schemes', () => {
    const old = sign(body, NOW, 'whsec_the_previous_secret_value');
    expect(outcome(`t=${NOW},v1=${old},v1=${sign(body, NOW)}`)).toBe('ok');
    expect(outcome(`t=${NOW},v0=deadbeef,v1=${sign(body, NOW)}`)).toBe('ok');
    expect(outcome(`t=${NOW}, v1=${sign(body, NOW).toUpperCase()}`)).toBe('ok');
  });

  it('refuses another secret, a changed body, or a signature for another timestamp (BAD_SIGNATURE)', () => {
    expect(outcome(`t=${NOW},v1=${sign(body, NOW, 'whsec_somebody_elses_secret_000')}`)).toBe(WebhookRejection.BAD_SIGNATURE);
    const tampered = Buffer.from(body);
    const at = tampered.length - 3;
    tampered.writeUInt8(tampered.readUInt8(at) ^ 1, at);
    expect(outcome(`t=${NOW},v1=${sign(body, NOW)}`, NOW, tampered)).toBe(WebhookRejection.BAD_SIGNATURE);
    // The timestamp is signed: moving it to look fresh breaks the signature.
    expect(outcome(`t=${NOW + 1},v1=${sign(body, NOW)}`)).toBe(WebhookRejection.BAD_SIGNATURE);
  });

  it('refuses an authentic delivery stamped further than the tolerance from now, either way (STALE_TIMESTAMP)', () => {
    const old = NOW - 301;
    expect(outcome(`t=${old},v1=${sign(body, old)}`)).toBe(WebhookRejection.STALE_TIMESTAMP);
    const future = NOW + 301;
    expect(outcome(`t=${future},v1=${sign(body, future)}`)).toBe(WebhookRejection.STALE_TIMESTAMP);
    const edge = NOW - 300;
    expect(outcome(`t=${edge},v1=${sign(body, edge)}`)).toBe('ok');
    // A forged stale delivery is a bad signature: only authentic ones are called stale.
    expect(outcome(`t=${old},v1=${'0'.repeat(64)}`)).toBe(WebhookRejection.BAD_SIGNATURE);
  });

  it.each([
    ['no header', undefined],
    ['empty', ''],
    ['no timestamp', `v1=${'a'.repeat(64)}`],
    ['no v1', `t=${NOW}`],
    ['only v0', `t=${NOW},v0=${'a'.repeat(64)}`],
    ['timestamp not a number', `t=soon,v1=${'a'.repeat(64)}`],
    ['two timestamps', `t=${NOW},t=${NOW},v1=${'a'.repeat(64)}`],
    ['v1 not hex', `t=${NOW},v1=${'z'.repeat(64)}`],
    ['v1 too short', `t=${NOW},v1=${'a'.repeat(63)}`],
    ['part without =', `t=${NOW},v1`],
    ['huge', `t=${NOW},v1=${'a'.repeat(5000)}`],
  ])('refuses a malformed header: %s (MALFORMED_SIGNATURE_HEADER)', (_what, header) => {
    expect(outcome(header)).toBe(WebhookRejection.MALFORMED_SIGNATURE_HEADER);
  });

  it('parses every v1 of a header, bounded', () => {
    const sigs = Array.from({ length: 12 }, (_, i) => i.toString(16).padStart(64, '0'));
    const parsed = parseSignatureHeader(`t=${NOW},${sigs.map((s) => `v1=${s}`).join(',')}`);
    expect(parsed?.timestamp).toBe(NOW);
    expect(parsed?.signatures).toHaveLength(8);
  });
});

describe('Stripe event parsing', () => {
  const subscriptionEvent = (object: Record<string, unknown>, type = 'customer.subscription.updated') => ({
    id: 'evt_1NabC',
    object: 'event',
    type,
    created: NOW,
    livemode: false,
    data: { object },
  });

  it('keeps ids, status and the first item’s price of a subscription, and nothing else', () => {
    const parsed = parseStripeEvent(
      subscriptionEvent({
        id: 'sub_1',
        object: 'subscription',
        customer: { id: 'cus_1', email: 'someone@example.com', name: 'Some One' },
        status: 'active',
        metadata: { keel_user: 'u_x', nickname: 'Some One' },
        items: { data: [{ price: { id: 'price_premium', nickname: 'Premium' } }, { price: { id: 'price_addon' } }] },
        description: 'Some One’s plan',
      }),
    );
    expect(parsed).toEqual({
      ok: true,
      event: {
        id: 'evt_1NabC',
        type: 'customer.subscription.updated',
        createdMs: NOW * 1000,
        kind: 'subscription',
        deleted: false,
        subscriptionId: 'sub_1',
        status: 'active',
        priceId: 'price_premium',
        keelUser: 'u_x',
      },
    });
  });

  it('finds an invoice’s subscription in either API version’s field', () => {
    const invoice = (object: Record<string, unknown>, type = 'invoice.paid') => parseStripeEvent({ ...subscriptionEvent(object, type) });
    expect(invoice({ id: 'in_1', subscription: 'sub_old', customer_email: 'a@b.c' })).toMatchObject({ ok: true, event: { kind: 'invoice', paid: true, subscriptionId: 'sub_old' } });
    expect(invoice({ id: 'in_1', parent: { subscription_details: { subscription: 'sub_new', metadata: {} } } }, 'invoice.payment_failed')).toMatchObject({
      ok: true,
      event: { kind: 'invoice', paid: false, subscriptionId: 'sub_new' },
    });
    expect(invoice({ id: 'in_1' })).toMatchObject({ ok: true, event: { subscriptionId: null } });
  });

  it('passes unknown types through and refuses what is not an event', () => {
    expect(parseStripeEvent(subscriptionEvent({ anything: 1 }, 'charge.succeeded'))).toMatchObject({ ok: true, event: { kind: 'unknown', type: 'charge.succeeded' } });
    for (const bad of [null, [], 'evt', { ...subscriptionEvent({}), id: 'nope' }, { ...subscriptionEvent({}), created: -1 }, { ...subscriptionEvent({}), data: {} }]) {
      expect(parseStripeEvent(bad).ok).toBe(false);
    }
    // A handled type whose object lacks what the relay needs, or smuggles text into an id.
    expect(parseStripeEvent(subscriptionEvent({ id: 'sub_1' })).ok).toBe(false);
    expect(parseStripeEvent(subscriptionEvent({ id: 'sub_someone@example.com', status: 'active' })).ok).toBe(false);
    // The customer is not read at all: whatever it holds is dropped, not kept.
    expect(parseStripeEvent(subscriptionEvent({ id: 'sub_1', status: 'active', customer: 'Some One' }))).not.toMatchObject({ event: { customerId: expect.anything() } });
  });
});
