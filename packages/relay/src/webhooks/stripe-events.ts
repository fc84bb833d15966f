import { describeIssues } from '@keel/engine';
import * as z from 'zod';

/*
 * Stripe's event format, validated with zod and reduced to what the relay needs. Stripe objects
 * carry many more fields (customer_email, customer_name, customer_details, addresses, card
 * details, descriptions, free-form metadata): the schemas are non-strict objects, which zod
 * strips to the fields named here, so nothing else of the body survives parsing.
 *
 * Every id is shape-checked (letters, digits, _ and -): an id field cannot carry an email or a
 * name into storage.
 */

const id = (prefix: string) =>
  z
    .string()
    .max(255)
    .regex(new RegExp(`^${prefix}_[A-Za-z0-9_]+$`), `must be a ${prefix}_… id`);

/** Price ids are `price_…`, but legacy plans may have any id their creator chose. */
const PriceIdSchema = z.string().min(1).max(255).regex(/^[A-Za-z0-9_-]+$/, 'price id must be letters, digits, _ or -');

/** Stripe sends an id, or the object when the field was expanded. */
const ref = (prefix: string) => z.union([id(prefix), z.object({ id: id(prefix) }).transform((o) => o.id)]);

const EventEnvelopeSchema = z.object({
  id: id('evt'),
  object: z.literal('event'),
  type: z.string().min(1).max(100).regex(/^[a-z0-9_.]+$/, 'event type must be lower-case words separated by dots'),
  /** Unix seconds. */
  created: z.number().int().min(0).max(2 ** 40),
  data: z.object({ object: z.record(z.string(), z.unknown()) }),
});

const SubscriptionItemSchema = z.object({
  price: z.object({ id: PriceIdSchema }).nullish(),
  /** Older API versions name the price a plan. */
  plan: z.object({ id: PriceIdSchema }).nullish(),
});

const SubscriptionSchema = z.object({
  id: id('sub'),
  status: z.string().min(1).max(40).regex(/^[a-z_]+$/, 'status must be a lower-case word'),
  /** Only `keel_user` is read; any other metadata is dropped here. */
  metadata: z.object({ keel_user: z.string().max(128).optional() }).nullish(),
  items: z.object({ data: z.array(SubscriptionItemSchema).max(100) }).nullish(),
});

const InvoiceSchema = z.object({
  /** API versions before 2025-03-31. */
  subscription: ref('sub').nullish(),
  /** API versions from 2025-03-31 ("basil") on. */
  parent: z
    .object({ subscription_details: z.object({ subscription: ref('sub').nullish() }).nullish() })
    .nullish(),
});

export const SUBSCRIPTION_EVENTS = ['customer.subscription.created', 'customer.subscription.updated', 'customer.subscription.deleted'] as const;
export const INVOICE_EVENTS = ['invoice.paid', 'invoice.payment_failed'] as const;

interface EventBase {
  readonly id: string;
  readonly type: string;
  /** `created` in ms. */
  readonly createdMs: number;
}

/** A Stripe event, reduced to ids, status and price. */
export type PaymentEvent =
  | (EventBase & {
      readonly kind: 'subscription';
      readonly deleted: boolean;
      readonly subscriptionId: string;
      readonly status: string;
      readonly priceId: string | null;
      /** `metadata.keel_user`, unvalidated (the processor checks it is a Keel user id). */
      readonly keelUser: string | null;
    })
  | (EventBase & {
      readonly kind: 'invoice';
      readonly paid: boolean;
      readonly subscriptionId: string | null;
    })
  | (EventBase & { readonly kind: 'unknown' });

export type ParsedEvent = { readonly ok: true; readonly event: PaymentEvent } | { readonly ok: false; readonly message: string };

const isOneOf = <T extends string>(list: readonly T[], value: string): value is T => (list as readonly string[]).includes(value);

/** Validates an event body (already JSON-parsed) and reduces it to a {@link PaymentEvent}. */
export const parseStripeEvent = (json: unknown): ParsedEvent => {
  const envelope = EventEnvelopeSchema.safeParse(json);
  if (!envelope.success) return { ok: false, message: `event: ${describeIssues(envelope.error)}` };
  const { id: eventId, type, created, data } = envelope.data;
  const base: EventBase = { id: eventId, type, createdMs: created * 1000 };

  if (isOneOf(SUBSCRIPTION_EVENTS, type)) {
    const parsed = SubscriptionSchema.safeParse(data.object);
    if (!parsed.success) return { ok: false, message: `data.object (subscription): ${describeIssues(parsed.error)}` };
    const sub = parsed.data;
    const item = sub.items?.data[0];
    return {
      ok: true,
      event: {
        ...base,
        kind: 'subscription',
        deleted: type === 'customer.subscription.deleted',
        subscriptionId: sub.id,
        status: sub.status,
        priceId: item?.price?.id ?? item?.plan?.id ?? null,
        keelUser: sub.metadata?.keel_user ?? null,
      },
    };
  }
  if (isOneOf(INVOICE_EVENTS, type)) {
    const parsed = InvoiceSchema.safeParse(data.object);
    if (!parsed.success) return { ok: false, message: `data.object (invoice): ${describeIssues(parsed.error)}` };
    const invoice = parsed.data;
    return {
      ok: true,
      event: {
        ...base,
        kind: 'invoice',
        paid: type === 'invoice.paid',
        subscriptionId: invoice.subscription ?? invoice.parent?.subscription_details?.subscription ?? null,
      },
    };
  }
  return { ok: true, event: { ...base, kind: 'unknown' } };
};
