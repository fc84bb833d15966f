import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { TierNameSchema, UserIdSchema, describeIssues } from '@keel/engine';
import * as z from 'zod';
import type { Entitlements } from '../entitlements/entitlements.js';
import type { Logger } from '../log.js';
import type { LogThrottle } from '../log-throttle.js';
import { type AuthFailureLimits, addressKey, createAuthFailureLimiter } from './auth-failure-limiter.js';
import { clientAddress } from './client-address.js';
import { type AdminUnauthenticatedRefusal, HttpErrorCode } from './http-codes.js';
import { readBody, sendJson } from './http-util.js';
import type { RefusalSink } from './refusal-counters.js';

const SetTierSchema = z.strictObject({ user: UserIdSchema, tier: TierNameSchema });

/** A tier command is two ids; anything near this size is not one. */
const MAX_ADMIN_BODY_BYTES = 16 * 1024;

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * The label logged for a request instead of its path: the path is the attacker's to choose
 * (terminal escapes, fake log lines, sheer length), the label is not.
 */
const routeLabel = (path: string): string => (path === '/admin/tier' ? 'admin.tier' : 'admin.unknown');

export interface AdminHandlerDeps {
  /** Bearer token; the endpoints answer 403 without one. */
  readonly token: string | undefined;
  readonly entitlements: Entitlements;
  readonly log: Logger;
  /** For lines anyone can trigger (failed logins). */
  readonly throttle: LogThrottle;
  readonly refusals: RefusalSink<AdminUnauthenticatedRefusal>;
  readonly now: () => number;
  /** How long a request body may take to arrive (ms). */
  readonly bodyTimeoutMs: number;
  /** Failed-login budgets; DEFAULT_AUTH_FAILURE_LIMITS unless a test injects smaller ones. */
  readonly limits?: AuthFailureLimits;
  /** The reverse proxy whose X-Forwarded-For names the client (`--trusted-proxy`); none: the socket's peer. */
  readonly trustedProxy?: string | undefined;
}

interface Reply {
  readonly status: number;
  readonly body: unknown;
  readonly headers?: Readonly<Record<string, string>>;
}

const error = (status: number, code: HttpErrorCode, message: string, headers?: Readonly<Record<string, string>>): Reply => ({
  status,
  body: { error: code, message },
  ...(headers ? { headers } : {}),
});

/**
 * Operator endpoints, authenticated by a bearer token compared in constant time (over digests,
 * so the comparison does not leak the token's length either). Disabled without a token.
 * Failed logins are budgeted per address and globally; past a budget the token is not even
 * checked, so a guesser cannot tell a right guess from a wrong one.
 */
export const createAdminHandler = (deps: AdminHandlerDeps) => {
  const { entitlements, log, throttle, refusals } = deps;
  const expected = deps.token === undefined ? undefined : digest(deps.token);
  const limiter = createAuthFailureLimiter(deps.now, deps.limits);
  const authorized = (req: IncomingMessage): boolean => {
    if (!expected) return false;
    const header = req.headers.authorization ?? '';
    const presented = header.startsWith('Bearer ') ? header.slice(7) : '';
    return timingSafeEqual(digest(presented), expected);
  };

  const handle = async (req: IncomingMessage, path: string): Promise<Reply | undefined> => {
    const route = routeLabel(path);
    if (!expected) {
      refusals.count(HttpErrorCode.ADMIN_DISABLED);
      return error(403, HttpErrorCode.ADMIN_DISABLED, 'set KEEL_RELAY_ADMIN_TOKEN to enable operator commands');
    }
    const address = addressKey(clientAddress(req, deps.trustedProxy));
    const waitMs = limiter.retryAfterMs(address);
    if (waitMs > 0) {
      refusals.count(HttpErrorCode.RATE_LIMITED);
      throttle.log('admin.rate_limited', 'warn', 'admin request rate limited', { route });
      const seconds = Math.ceil(waitMs / 1000);
      return error(429, HttpErrorCode.RATE_LIMITED, `too many failed admin logins; retry in ${seconds} s`, { 'retry-after': String(seconds) });
    }
    if (!authorized(req)) {
      limiter.recordFailure(address);
      refusals.count(HttpErrorCode.NOT_AUTHENTICATED);
      throttle.log('admin.auth_failed', 'warn', 'admin authentication failed', { route });
      return error(401, HttpErrorCode.NOT_AUTHENTICATED, 'missing or wrong bearer token');
    }
    if (path === '/admin/tier' && req.method === 'POST') {
      const read = await readBody(req, MAX_ADMIN_BODY_BYTES, deps.bodyTimeoutMs);
      if (!read.ok) {
        if (read.reason === 'aborted') return undefined;
        if (read.reason === 'timeout') return error(408, HttpErrorCode.BODY_TIMEOUT, `body not received within ${deps.bodyTimeoutMs} ms`);
        return error(413, HttpErrorCode.FRAME_TOO_LARGE, 'body over 16 KiB');
      }
      let json: unknown;
      try {
        json = JSON.parse(read.body.toString('utf8'));
      } catch {
        return error(400, HttpErrorCode.BAD_JSON, 'body is not JSON');
      }
      const parsed = SetTierSchema.safeParse(json);
      if (!parsed.success) return error(400, HttpErrorCode.SCHEMA, describeIssues(parsed.error));
      const { previous, current } = await entitlements.setTier(parsed.data.user, parsed.data.tier, 'operator');
      log.log('info', 'tier set by operator', { user: parsed.data.user, from: previous.name, to: current.name });
      return { status: 200, body: { user: parsed.data.user, tier: current.name, previous: previous.name, since: current.since } };
    }
    if (path === '/admin/tier' && req.method === 'GET') {
      const user = UserIdSchema.safeParse(new URL(req.url ?? '', 'http://relay').searchParams.get('user'));
      if (!user.success) return error(400, HttpErrorCode.SCHEMA, 'query parameter "user" must be a Keel user id');
      const state = await entitlements.tierOf(user.data);
      return { status: 200, body: { user: user.data, tier: state.name, since: state.since, policy: state.policy } };
    }
    return error(404, HttpErrorCode.NOT_FOUND, `no admin route for ${req.method} ${path}`);
  };

  /** Handles /admin/*; returns false for other paths. */
  return async (req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> => {
    if (!path.startsWith('/admin/')) return false;
    const reply = await handle(req, path);
    // The operator's command hung up mid-body: nobody to answer.
    if (!reply) res.destroy();
    else sendJson(res, reply.status, reply.body, reply.headers);
    return true;
  };
};
