import { createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { readBody } from '../server/http-util.js';
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

/** A signed POST's body, or why it was refused before anything parsed it. */
export type SignedBody =
  | { readonly ok: true; readonly body: Buffer }
  /** The sender went away mid-body: nobody to answer. */
  | { readonly ok: false; readonly aborted: true }
  | {
      readonly ok: false;
      readonly aborted: false;
      readonly status: 400 | 408 | 413;
      readonly code: typeof WebhookRejection.BODY_TOO_LARGE | typeof WebhookRejection.BODY_TIMEOUT | Extract<SignatureCheck, { ok: false }>['code'];
      readonly message: string;
      /** The body was not read to its end: answer with `connection: close`. */
      readonly close: boolean;
    };

export interface SignedBodyOptions {
  readonly maxBytes: number;
  readonly bodyTimeoutMs: number;
  /** The header carrying `t=…,v1=…` (lower case, as Node keys headers). */
  readonly header: string;
  /** How answers name that header. */
  readonly headerLabel: string;
  readonly secret: string;
  readonly nowSeconds: number;
  readonly toleranceSeconds: number;
}

/**
 * Reads a signed POST's raw body within its size and time limits (a declared size over the
 * limit is refused before a byte is read) and checks it against the HMAC before anything parses
 * it. The payment webhooks and `POST /crisis` take their deliveries through here.
 */
export const readSignedBody = async (req: IncomingMessage, options: SignedBodyOptions): Promise<SignedBody> => {
  const tooLarge = { ok: false, aborted: false, status: 413, code: WebhookRejection.BODY_TOO_LARGE, message: `body over ${options.maxBytes} bytes`, close: true } as const;
  if (Number(req.headers['content-length'] ?? 0) > options.maxBytes) return tooLarge;
  const read = await readBody(req, options.maxBytes, options.bodyTimeoutMs);
  if (!read.ok) {
    if (read.reason === 'aborted') return { ok: false, aborted: true };
    if (read.reason === 'timeout') {
      return { ok: false, aborted: false, status: 408, code: WebhookRejection.BODY_TIMEOUT, message: `body not received within ${options.bodyTimeoutMs} ms`, close: true };
    }
    return tooLarge;
  }
  const value = req.headers[options.header];
  const check = verifyStripeSignature(read.body, typeof value === 'string' ? value : undefined, options.secret, options.nowSeconds, options.toleranceSeconds);
  if (!check.ok) return { ok: false, aborted: false, status: 400, code: check.code, message: check.message.replace('Stripe-Signature', options.headerLabel), close: false };
  return { ok: true, body: read.body };
};

/**
 * Signs `body` the way `verifyStripeSignature` checks it: `t=<unix seconds>,v1=<hex
 * HMAC-SHA256(secret, "t.body")>`. The relay signs its own outgoing alerts with it, and an
 * operator's crisis service signs `POST /crisis` the same way.
 */
export const signatureHeader = (secret: string, body: string | Buffer, nowSeconds: number): string =>
  `t=${nowSeconds},v1=${createHmac('sha256', secret).update(`${nowSeconds}.`).update(body).digest('hex')}`;
