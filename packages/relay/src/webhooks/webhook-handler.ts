import type { IncomingMessage, ServerResponse } from 'node:http';
import type { PaymentProcessor } from '../entitlements/payments.js';
import type { Logger } from '../log.js';
import type { RelayStore } from '../storage/relay-store.js';
import { readBody, sendJson } from '../server/http-util.js';
import { verifyStripeSignature } from './signature.js';
import { parseStripeEvent } from './stripe-events.js';
import { WebhookRejection } from './webhook-codes.js';

export const WEBHOOK_PATH = '/webhooks/payments';

/** Stripe events are a few KiB; an invoice with many lines stays far below this. */
export const MAX_WEBHOOK_BODY_BYTES = 256 * 1024;

export interface WebhookHandlerDeps {
  /** Endpoint secret (`whsec_…`); the endpoint answers 503 without one. */
  readonly secret: string | undefined;
  readonly toleranceSeconds: number;
  readonly payments: PaymentProcessor;
  readonly store: RelayStore;
  readonly log: Logger;
  readonly now: () => number;
}

/**
 * `POST /webhooks/payments`: Stripe's event format and `Stripe-Signature` scheme. The raw body
 * is verified before it is parsed, and is never stored or logged; a refused delivery changes
 * nothing but an audit row with the reason.
 */
export const createWebhookHandler = (deps: WebhookHandlerDeps) => {
  const { secret, payments, store, log, now } = deps;

  const refuse = async (status: number, code: WebhookRejection, message: string): Promise<{ status: number; body: unknown }> => {
    await store.appendAudit([{ actor: 'webhook', op: 'payment.event', userId: null, outcome: code, detail: {} }], now());
    log.log('warn', 'payment webhook refused', { outcome: code });
    return { status, body: { error: code, message } };
  };

  const handle = async (req: IncomingMessage): Promise<{ status: number; body: unknown; close?: boolean }> => {
    if (req.method !== 'POST') {
      req.resume();
      return { status: 405, body: { error: WebhookRejection.METHOD_NOT_ALLOWED, message: `use POST ${WEBHOOK_PATH}` } };
    }
    if (secret === undefined) {
      req.resume();
      return {
        status: 503,
        body: { error: WebhookRejection.WEBHOOKS_DISABLED, message: 'payment webhooks are off: set KEEL_RELAY_WEBHOOK_SECRET to the endpoint secret' },
      };
    }
    const tooLarge = () => refuse(413, WebhookRejection.BODY_TOO_LARGE, `body over ${MAX_WEBHOOK_BODY_BYTES} bytes`);
    // A declared size over the limit is refused before a byte is read; the connection then closes.
    if (Number(req.headers['content-length'] ?? 0) > MAX_WEBHOOK_BODY_BYTES) return { ...(await tooLarge()), close: true };
    const raw = await readBody(req, MAX_WEBHOOK_BODY_BYTES);
    if (!raw) return tooLarge();
    const header = req.headers['stripe-signature'];
    const check = verifyStripeSignature(raw, typeof header === 'string' ? header : undefined, secret, Math.floor(now() / 1000), deps.toleranceSeconds);
    if (!check.ok) return refuse(400, check.code, check.message);
    let json: unknown;
    try {
      json = JSON.parse(raw.toString('utf8'));
    } catch {
      return refuse(400, WebhookRejection.MALFORMED_BODY, 'body is not JSON');
    }
    const parsed = parseStripeEvent(json);
    if (!parsed.ok) return refuse(400, WebhookRejection.SCHEMA, parsed.message);
    const result = await payments.applyEvent(parsed.event);
    return {
      status: 200,
      body: { received: true, outcome: result.outcome, ...(result.duplicate ? { duplicate: true } : {}), ...(result.stale ? { stale: true } : {}) },
    };
  };

  /** Handles /webhooks/payments; returns false for other paths. */
  return async (req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> => {
    if (path !== WEBHOOK_PATH) return false;
    const reply = await handle(req);
    if (reply.close) res.setHeader('connection', 'close');
    sendJson(res, reply.status, reply.body);
    return true;
  };
};
