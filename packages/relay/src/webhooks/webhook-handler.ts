import type { IncomingMessage, ServerResponse } from 'node:http';
import type { PaymentProcessor } from '../entitlements/payments.js';
import type { RelayEvents } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import type { LogThrottle } from '../log-throttle.js';
import type { RelayStore } from '../storage/relay-store.js';
import { sendJson } from '../server/http-util.js';
import type { RefusalSink } from '../server/refusal-counters.js';
import { readSignedBody } from './signature.js';
import { parseStripeEvent } from './stripe-events.js';
import { type UnauthenticatedRefusal, WebhookRejection } from './webhook-codes.js';

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
  /** For refusals anyone can cause (before the signature is verified). */
  readonly throttle: LogThrottle;
  readonly refusals: RefusalSink<UnauthenticatedRefusal>;
  /** Every answered delivery is told here as a `webhook` event with its outcome code. */
  readonly events: RelayEvents;
  readonly now: () => number;
  /** How long a delivery's body may take to arrive (ms). */
  readonly bodyTimeoutMs: number;
}

interface Reply {
  readonly status: number;
  readonly body: unknown;
  readonly close?: boolean;
  /** A WebhookRejection code, or the outcome of the applied event (a fixed set of codes). */
  readonly outcome: string;
}

/**
 * `POST /webhooks/payments`: Stripe's event format and `Stripe-Signature` scheme. The raw body
 * is verified before it is parsed, and is never stored or logged. A refused delivery changes
 * nothing; only one with a valid, fresh signature leaves an audit row with the reason (see
 * UNAUTHENTICATED_REFUSALS for why the others do not).
 */
export const createWebhookHandler = (deps: WebhookHandlerDeps) => {
  const { secret, payments, store, log, throttle, refusals, now } = deps;

  const refuseUnauthenticated = (status: number, code: UnauthenticatedRefusal, message: string, close = false): Reply => {
    refusals.count(code);
    throttle.log(`webhook.${code}`, 'warn', 'payment webhook refused', { outcome: code });
    return { status, body: { error: code, message }, outcome: code, ...(close ? { close } : {}) };
  };

  /** The provider itself sent something unusable: worth a durable record. */
  const refuseSigned = async (code: typeof WebhookRejection.MALFORMED_BODY | typeof WebhookRejection.SCHEMA, message: string): Promise<Reply> => {
    await store.appendAudit([{ actor: 'webhook', op: 'payment.event', userId: null, outcome: code, detail: {} }], now());
    log.log('warn', 'payment webhook refused', { outcome: code });
    return { status: 400, body: { error: code, message }, outcome: code };
  };

  const handle = async (req: IncomingMessage): Promise<Reply | undefined> => {
    if (req.method !== 'POST') {
      req.resume();
      return refuseUnauthenticated(405, WebhookRejection.METHOD_NOT_ALLOWED, `use POST ${WEBHOOK_PATH}`);
    }
    if (secret === undefined) {
      req.resume();
      return refuseUnauthenticated(
        503,
        WebhookRejection.WEBHOOKS_DISABLED,
        'payment webhooks are off: set KEEL_RELAY_WEBHOOK_SECRET to the endpoint secret',
      );
    }
    const signed = await readSignedBody(req, {
      maxBytes: MAX_WEBHOOK_BODY_BYTES,
      bodyTimeoutMs: deps.bodyTimeoutMs,
      header: 'stripe-signature',
      headerLabel: 'Stripe-Signature',
      secret,
      nowSeconds: Math.floor(now() / 1000),
      toleranceSeconds: deps.toleranceSeconds,
    });
    if (!signed.ok) return signed.aborted ? undefined : refuseUnauthenticated(signed.status, signed.code, signed.message, signed.close);
    const raw = signed.body;
    let json: unknown;
    try {
      json = JSON.parse(raw.toString('utf8'));
    } catch {
      return refuseSigned(WebhookRejection.MALFORMED_BODY, 'body is not JSON');
    }
    const parsed = parseStripeEvent(json);
    if (!parsed.ok) return refuseSigned(WebhookRejection.SCHEMA, parsed.message);
    const result = await payments.applyEvent(parsed.event);
    return {
      status: 200,
      outcome: result.outcome,
      body: { received: true, outcome: result.outcome, ...(result.duplicate ? { duplicate: true } : {}), ...(result.stale ? { stale: true } : {}) },
    };
  };

  /** Handles /webhooks/payments; returns false for other paths. */
  return async (req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> => {
    if (path !== WEBHOOK_PATH) return false;
    const reply = await handle(req);
    // The sender hung up mid-body: nobody to answer.
    if (!reply) {
      res.destroy();
      return true;
    }
    deps.events.emit('webhook', { outcome: reply.outcome });
    if (reply.close) res.setHeader('connection', 'close');
    sendJson(res, reply.status, reply.body);
    return true;
  };
};
