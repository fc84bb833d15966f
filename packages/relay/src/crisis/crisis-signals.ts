import type { IncomingMessage, ServerResponse } from 'node:http';
import { type CrisisSignal, CrisisSignalSchema, type RelayId, UserIdSchema, type UserId, describeIssues, fromB64, verifyCrisisSignal } from '@keel/engine';
import * as z from 'zod';
import type { RelayEvents } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import type { LogThrottle } from '../log-throttle.js';
import type { RelayStore } from '../storage/relay-store.js';
import { sendJson } from '../server/http-util.js';
import { readSignedBody } from '../webhooks/signature.js';

export const CRISIS_PATH = '/crisis';

/** A signal is a few hundred bytes. */
const MAX_BODY_BYTES = 4 * 1024;

/** How long the relay keeps a signal for devices that are offline when it comes. */
export const CRISIS_SIGNAL_RETENTION_MS = 7 * 24 * 60 * 60 * 1000;

/** Signals of one user kept at once (the newest); far more than any care team sends in a week. */
export const MAX_SIGNALS_PER_USER = 16;

/** The body of `POST /crisis`: a pseudonymous user and the signal, as the operator's crisis service sends it. */
export const CrisisRequestSchema = z.strictObject({
  user: UserIdSchema,
  signal: CrisisSignalSchema,
});

/** Codes of `POST /crisis` answers. Refusals before the HMAC checks out are counted, never audited (anyone can send them). */
export const CrisisSignalCode = {
  DISABLED: 'CRISIS_SIGNALS_DISABLED',
  METHOD_NOT_ALLOWED: 'METHOD_NOT_ALLOWED',
  BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  BODY_TIMEOUT: 'BODY_TIMEOUT',
  MALFORMED_SIGNATURE_HEADER: 'MALFORMED_SIGNATURE_HEADER',
  BAD_SIGNATURE: 'BAD_SIGNATURE',
  STALE_TIMESTAMP: 'STALE_TIMESTAMP',
  BAD_JSON: 'BAD_JSON',
  SCHEMA: 'SCHEMA',
  /** An authority key is configured and the signal carries no valid signature by it. */
  BAD_AUTHORITY_SIGNATURE: 'BAD_AUTHORITY_SIGNATURE',
  UNKNOWN_USER: 'UNKNOWN_USER',
  DELIVERED: 'DELIVERED',
  DUPLICATE: 'DUPLICATE',
} as const;
export type CrisisSignalCode = (typeof CrisisSignalCode)[keyof typeof CrisisSignalCode];

/** The header carrying `t=…,v1=…` (HMAC-SHA256 over "t.body" with the crisis secret), as the alerts and Stripe's webhooks are signed. */
export const CRISIS_SIGNATURE_HEADER = 'keel-signature';

export interface CrisisSignalDeps {
  /** HMAC secret of the operator's crisis service; the endpoint answers 503 without one. */
  readonly secret: string | undefined;
  /** The crisis authority's Ed25519 public keys: given, every signal must carry a valid `sig` by one. */
  readonly authorityKeys: readonly Uint8Array[];
  /** This deployment's id (bound into an authority's signature); none: no signature verifies. */
  readonly relayId: RelayId | undefined;
  readonly toleranceSeconds: number;
  readonly store: RelayStore;
  readonly log: Logger;
  /** For refusals anyone can cause. */
  readonly throttle: LogThrottle;
  readonly events: RelayEvents;
  readonly now: () => number;
  readonly bodyTimeoutMs: number;
  /** Sends the signal to every connected device of the user at once, at crisis priority. */
  readonly deliver: (user: UserId, signal: CrisisSignal) => number;
}

/**
 * `POST /crisis`: an authenticated external crisis signal. The raw body is checked against the
 * HMAC before it is parsed; a bad or stale signature is a 400 and changes nothing. A valid one
 * naming a user the relay knows is kept (for devices that connect later, up to a week), audited,
 * and sent at once to every connected device of the user; the same signal id again is answered
 * as a duplicate and changes nothing.
 */
export const createCrisisSignalRoute = (deps: CrisisSignalDeps) => {
  const { store, log, throttle, events, now } = deps;

  const answer = (res: ServerResponse, status: number, code: CrisisSignalCode, message: string, extra: Record<string, unknown> = {}) => {
    events.emit('crisisSignal', { outcome: code });
    sendJson(res, status, status < 300 ? { outcome: code, ...extra } : { error: code, message });
  };
  const refuse = (res: ServerResponse, status: number, code: CrisisSignalCode, message: string) => {
    throttle.log(`crisis.${code}`, 'warn', 'crisis signal refused', { outcome: code });
    answer(res, status, code, message);
  };

  return async (req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> => {
    if (path !== CRISIS_PATH) return false;
    if (req.method !== 'POST') {
      req.resume();
      refuse(res, 405, CrisisSignalCode.METHOD_NOT_ALLOWED, `use POST ${CRISIS_PATH}`);
      return true;
    }
    if (deps.secret === undefined) {
      req.resume();
      refuse(res, 503, CrisisSignalCode.DISABLED, 'crisis signals are off: set KEEL_RELAY_CRISIS_SECRET');
      return true;
    }
    const signed = await readSignedBody(req, {
      maxBytes: MAX_BODY_BYTES,
      bodyTimeoutMs: deps.bodyTimeoutMs,
      header: CRISIS_SIGNATURE_HEADER,
      headerLabel: CRISIS_SIGNATURE_HEADER,
      secret: deps.secret,
      nowSeconds: Math.floor(now() / 1000),
      toleranceSeconds: deps.toleranceSeconds,
    });
    if (!signed.ok) {
      if (signed.aborted) {
        res.destroy();
        return true;
      }
      if (signed.close) res.setHeader('connection', 'close');
      refuse(res, signed.status, signed.code, signed.message);
      return true;
    }
    // Authenticated from here on: every outcome is audited.
    const audited = async (status: number, code: CrisisSignalCode, message: string, user: UserId | null, extra: Record<string, unknown> = {}) => {
      await store.appendAudit([{ actor: 'crisis', op: 'crisis.signal', userId: user, outcome: code, detail: {} }], now());
      log.log(status < 300 ? 'info' : 'warn', 'crisis signal', { outcome: code, ...(user ? { user } : {}) });
      answer(res, status, code, message, extra);
    };
    let json: unknown;
    try {
      json = JSON.parse(signed.body.toString('utf8'));
    } catch {
      await audited(400, CrisisSignalCode.BAD_JSON, 'body is not JSON', null);
      return true;
    }
    const parsed = CrisisRequestSchema.safeParse(json);
    if (!parsed.success) {
      await audited(400, CrisisSignalCode.SCHEMA, `invalid crisis signal: ${describeIssues(parsed.error)}`, null);
      return true;
    }
    const { user, signal } = parsed.data;
    if (deps.authorityKeys.length > 0) {
      const relay = deps.relayId;
      const statement = relay === undefined ? undefined : { relay, user, id: signal.id, at: signal.at, reason: signal.reason };
      if (statement === undefined || signal.sig === undefined || !verifyCrisisSignal(statement, signal.sig, deps.authorityKeys)) {
        await audited(400, CrisisSignalCode.BAD_AUTHORITY_SIGNATURE, 'the signal carries no valid signature by the configured crisis authority', user);
        return true;
      }
    }
    if (!(await store.hasUser(user))) {
      await audited(404, CrisisSignalCode.UNKNOWN_USER, 'no such user on this relay', null);
      return true;
    }
    const kept = await store.keepCrisisSignal(user, signal, now(), { retentionMs: CRISIS_SIGNAL_RETENTION_MS, maxPerUser: MAX_SIGNALS_PER_USER });
    if (kept === 'duplicate') {
      answer(res, 200, CrisisSignalCode.DUPLICATE, '', { duplicate: true });
      return true;
    }
    const online = deps.deliver(user, signal);
    await audited(200, CrisisSignalCode.DELIVERED, '', user, { devicesOnline: online });
    return true;
  };
};

/** Decodes the configured authority keys (base64url Ed25519 public keys, 32 bytes each). */
export const parseAuthorityKeys = (keys: readonly string[]): Uint8Array[] => keys.map((key) => fromB64(key));
