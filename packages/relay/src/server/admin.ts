import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { TierNameSchema, UserIdSchema, describeIssues } from '@keel/engine';
import { z } from 'zod';
import type { Entitlements } from '../entitlements/entitlements.js';
import type { Logger } from '../log.js';
import { readBody, sendJson } from './http-util.js';

const SetTierSchema = z.strictObject({ user: UserIdSchema, tier: TierNameSchema });

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * Operator endpoints, authenticated by a bearer token compared in constant time (over digests,
 * so the comparison does not leak the token's length either). Disabled without a token.
 */
export const createAdminHandler = (token: string | undefined, entitlements: Entitlements, log: Logger) => {
  const expected = token === undefined ? undefined : digest(token);
  const authorized = (req: IncomingMessage): boolean => {
    if (!expected) return false;
    const header = req.headers.authorization ?? '';
    const presented = header.startsWith('Bearer ') ? header.slice(7) : '';
    return timingSafeEqual(digest(presented), expected);
  };

  const handle = async (req: IncomingMessage, path: string): Promise<{ status: number; body: unknown }> => {
    if (!expected) return { status: 403, body: { error: 'ADMIN_DISABLED', message: 'set KEEL_RELAY_ADMIN_TOKEN to enable operator commands' } };
    if (!authorized(req)) {
      log.log('warn', 'admin authentication failed', { path });
      return { status: 401, body: { error: 'NOT_AUTHENTICATED', message: 'missing or wrong bearer token' } };
    }
    if (path === '/admin/tier' && req.method === 'POST') {
      const body = await readBody(req, 16 * 1024);
      if (!body) return { status: 413, body: { error: 'FRAME_TOO_LARGE', message: 'body over 16 KiB' } };
      let json: unknown;
      try {
        json = JSON.parse(body.toString('utf8'));
      } catch {
        return { status: 400, body: { error: 'BAD_JSON', message: 'body is not JSON' } };
      }
      const parsed = SetTierSchema.safeParse(json);
      if (!parsed.success) return { status: 400, body: { error: 'SCHEMA', message: describeIssues(parsed.error) } };
      const { previous, current } = await entitlements.setTier(parsed.data.user, parsed.data.tier, 'operator');
      log.log('info', 'tier set by operator', { user: parsed.data.user, from: previous.name, to: current.name });
      return { status: 200, body: { user: parsed.data.user, tier: current.name, previous: previous.name, since: current.since } };
    }
    if (path === '/admin/tier' && req.method === 'GET') {
      const user = UserIdSchema.safeParse(new URL(req.url ?? '', 'http://relay').searchParams.get('user'));
      if (!user.success) return { status: 400, body: { error: 'SCHEMA', message: 'query parameter "user" must be a Keel user id' } };
      const state = await entitlements.tierOf(user.data);
      return { status: 200, body: { user: user.data, tier: state.name, since: state.since, policy: state.policy } };
    }
    return { status: 404, body: { error: 'NOT_FOUND', message: `no admin route for ${req.method} ${path}` } };
  };

  /** Handles /admin/*; returns false for other paths. */
  return async (req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> => {
    if (!path.startsWith('/admin/')) return false;
    const reply = await handle(req, path);
    sendJson(res, reply.status, reply.body);
    return true;
  };
};
