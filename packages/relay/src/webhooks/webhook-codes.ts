/**
 * Every reason the payment webhook endpoint refuses a delivery, with a stable code. A refused
 * delivery changes nothing; the provider retries 5xx answers, and 4xx ones are its sender's bug.
 */
export const WebhookRejection = {
  /** No endpoint secret is configured (503). */
  WEBHOOKS_DISABLED: 'WEBHOOKS_DISABLED',
  /** Body above the size limit (413). */
  BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  /** Body not complete within the body timeout (408, connection closed). */
  BODY_TIMEOUT: 'BODY_TIMEOUT',
  /** `Stripe-Signature` missing or not `t=<unix seconds>,v1=<hex>[,v1=…]` (400). */
  MALFORMED_SIGNATURE_HEADER: 'MALFORMED_SIGNATURE_HEADER',
  /** No v1 signature matches HMAC-SHA256(secret, `${t}.${body}`) (400). */
  BAD_SIGNATURE: 'BAD_SIGNATURE',
  /** Correctly signed, but `t` is further from the relay's clock than the tolerance: a replay (400). */
  STALE_TIMESTAMP: 'STALE_TIMESTAMP',
  /** Body is not JSON (400). */
  MALFORMED_BODY: 'MALFORMED_BODY',
  /** JSON, but not a Stripe event (or a handled object lacks what the relay needs) (400). */
  SCHEMA: 'SCHEMA',
  /** Only POST (405). */
  METHOD_NOT_ALLOWED: 'METHOD_NOT_ALLOWED',
} as const;
export type WebhookRejection = (typeof WebhookRejection)[keyof typeof WebhookRejection];

/**
 * Refusals decided before a signature has proved the delivery authentic. Anyone can cause them,
 * as fast as the network allows, so they are counted in memory and logged rate-limited — never
 * written to the audit trail, which is durable and append-only. STALE_TIMESTAMP is among them
 * although its signature matched: it is a replay, and a captured delivery can be replayed
 * without end.
 */
export const UNAUTHENTICATED_REFUSALS = [
  WebhookRejection.WEBHOOKS_DISABLED,
  WebhookRejection.METHOD_NOT_ALLOWED,
  WebhookRejection.BODY_TOO_LARGE,
  WebhookRejection.BODY_TIMEOUT,
  WebhookRejection.MALFORMED_SIGNATURE_HEADER,
  WebhookRejection.BAD_SIGNATURE,
  WebhookRejection.STALE_TIMESTAMP,
] as const;
export type UnauthenticatedRefusal = (typeof UNAUTHENTICATED_REFUSALS)[number];
