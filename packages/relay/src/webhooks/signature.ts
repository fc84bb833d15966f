import { createHmac, timingSafeEqual } from 'node:crypto';
import { WebhookRejection } from './webhook-codes.js';

/** Stripe's default: a signed delivery is good for 5 minutes. */
export const DEFAULT_TOLERANCE_SECONDS = 300;

/** At most this many v1 signatures are tried (Stripe sends one per active secret, so 1–2). */
const MAX_SIGNATURES = 8;

export type SignatureCheck =
  | { readonly ok: true; readonly timestamp: number }
  | {
      readonly ok: false;
      readonly code: typeof WebhookRejection.MALFORMED_SIGNATURE_HEADER | typeof WebhookRejection.BAD_SIGNATURE | typeof WebhookRejection.STALE_TIMESTAMP;
      readonly message: string;
    };

const HEX_SHA256 = /^[0-9a-f]{64}$/i;

/**
 * Parses `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`. Other schemes (`v0`, future ones) are
 * ignored, as Stripe's own libraries do. Undefined when the header is malformed.
 */
export const parseSignatureHeader = (header: string): { timestamp: number; signatures: Buffer[] } | undefined => {
  if (header.length > 4096) return undefined;
  let timestamp: number | undefined;
  const signatures: Buffer[] = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) return undefined;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === 't') {
      if (timestamp !== undefined || !/^\d{1,12}$/.test(value)) return undefined;
      timestamp = Number(value);
    } else if (key === 'v1') {
      if (!HEX_SHA256.test(value)) return undefined;
      if (signatures.length < MAX_SIGNATURES) signatures.push(Buffer.from(value, 'hex'));
    }
  }
  if (timestamp === undefined || signatures.length === 0) return undefined;
  return { timestamp, signatures };
};

/**
 * Verifies a `Stripe-Signature` header: some v1 must equal HMAC-SHA256(secret, `${t}.${rawBody}`),
 * compared in constant time, and `t` must be within `toleranceSeconds` of `nowSeconds` (either
 * way: a delivery stamped in the future is as suspect as a replayed old one). The signature is
 * checked before the time, so only an authentic delivery is ever called stale.
 */
export const verifyStripeSignature = (
  rawBody: Buffer,
  header: string | undefined,
  secret: string,
  nowSeconds: number,
  toleranceSeconds: number = DEFAULT_TOLERANCE_SECONDS,
): SignatureCheck => {
  const parsed = header === undefined ? undefined : parseSignatureHeader(header);
  if (!parsed) {
    return {
      ok: false,
      code: WebhookRejection.MALFORMED_SIGNATURE_HEADER,
      message: 'Stripe-Signature header must be t=<unix seconds>,v1=<hex HMAC-SHA256>',
    };
  }
  const expected = createHmac('sha256', secret).update(`${parsed.timestamp}.`).update(rawBody).digest();
  let matched = false;
  // Every candidate is compared (no early exit), each in constant time over equal lengths.
  for (const signature of parsed.signatures) {
    if (signature.length === expected.length && timingSafeEqual(signature, expected)) matched = true;
  }
  if (!matched) return { ok: false, code: WebhookRejection.BAD_SIGNATURE, message: 'no v1 signature matches the payload and the endpoint secret' };
  if (Math.abs(nowSeconds - parsed.timestamp) > toleranceSeconds) {
    return {
      ok: false,
      code: WebhookRejection.STALE_TIMESTAMP,
      message: `signature timestamp is more than ${toleranceSeconds} s from the relay's clock`,
    };
  }
  return { ok: true, timestamp: parsed.timestamp };
};

/**
 * Signs `body` the way `verifyStripeSignature` checks it: `t=<unix seconds>,v1=<hex
 * HMAC-SHA256(secret, "t.body")>`. The relay signs its own outgoing alerts with it, and an
 * operator's crisis service signs `POST /crisis` the same way.
 */
export const signatureHeader = (secret: string, body: string | Buffer, nowSeconds: number): string =>
  `t=${nowSeconds},v1=${createHmac('sha256', secret).update(`${nowSeconds}.`).update(body).digest('hex')}`;
