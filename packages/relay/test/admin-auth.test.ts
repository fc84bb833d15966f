import { type IncomingHttpHeaders, type Server, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DEFAULT_TIERS } from '@keel/engine';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createEntitlements } from '../src/entitlements/entitlements.js';
import type { Logger } from '../src/log.js';
import { createLogThrottle } from '../src/log-throttle.js';
import { createAdminHandler } from '../src/server/admin.js';
import { ADMIN_UNAUTHENTICATED_REFUSALS } from '../src/server/http-codes.js';
import { createRefusalCounters } from '../src/server/refusal-counters.js';
import type { RelayStore } from '../src/storage/relay-store.js';
import { openSqliteStore } from '../src/storage/sqlite-store.js';

/*
 * The admin handler behind a real HTTP server on 127.0.0.1, with real entitlements on an
 * in-memory SQLite store; only the clock is the test's. Linux routes all of 127.0.0.0/8 to
 * loopback, so binding a client to 127.0.0.2, .3, … gives each request a distinct address.
 */

const TOKEN = 'operator-token-0123456789abcdef';
const USER = `u_${'A'.repeat(43)}`;
/** A forged log line, percent-encoded newline included: what an attacker would like to see logged. */
const ATTACKER_PATH = '/admin/%0a{"level":"error","msg":"forged-entry-7f3a"}/..%2f..%2fetc%2fpasswd';

let server: Server | undefined;
let store: RelayStore | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await store?.close();
  server = undefined;
  store = undefined;
});

let t = 0;
let lines: string[] = [];
const refusals = () => createRefusalCounters(ADMIN_UNAUTHENTICATED_REFUSALS);
let counters = refusals();

beforeEach(() => {
  t = 1_700_000_000_000;
  lines = [];
  counters = refusals();
});

/** Per address 3 failures a minute, 5 in all: small enough to spend in a test. */
const start = async () => {
  const now = () => t;
  store = openSqliteStore({ path: ':memory:' });
  const log: Logger = { log: (level, msg, fields) => lines.push(JSON.stringify({ level, msg, ...fields })) };
  const admin = createAdminHandler({
    token: TOKEN,
    entitlements: createEntitlements(store, DEFAULT_TIERS, 'trial', now),
    log,
    throttle: createLogThrottle({ log, now }),
    refusals: counters,
    now,
    bodyTimeoutMs: 2_000,
    limits: { perAddress: { failures: 3, perMs: 60_000 }, global: { failures: 5, perMs: 60_000 }, maxAddresses: 100 },
  });
  server = createServer((req, res) => {
    void admin(req, res, (req.url ?? '/').split('?')[0]!).then((handled) => {
      if (!handled) res.writeHead(404).end();
    });
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server!.once('listening', resolve));
  return (server.address() as AddressInfo).port;
};

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Record<string, unknown>;
}

/** GET `path` from source address `from` with `token`. */
const get = (port: number, from: string, token: string, path = `/admin/tier?user=${USER}`) =>
  new Promise<Answer>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, localAddress: from, agent: false, headers: { authorization: `Bearer ${token}` }, timeout: 2_000 });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(text) as Record<string, unknown> }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 2 s')));
    req.on('error', reject);
    req.end();
  });

describe('admin brute force', () => {
  it('past the per-address budget answers 429 + Retry-After without checking the token; other addresses still get in', async () => {
    const port = await start();
    for (let i = 0; i < 3; i++) expect((await get(port, '127.0.0.1', `wrong-${i}`)).status).toBe(401);

    const limited = await get(port, '127.0.0.1', 'wrong-3');
    expect(limited.status).toBe(429);
    expect(limited.body).toMatchObject({ error: 'RATE_LIMITED' });
    // 3 a minute: the next one is allowed 20 s after the budget ran out.
    expect(limited.headers['retry-after']).toBe('20');
    // The right token gets the same answer: a guesser cannot tell when it has guessed right.
    const right = await get(port, '127.0.0.1', TOKEN);
    expect([right.status, right.body.error, right.headers['retry-after']]).toEqual([429, 'RATE_LIMITED', '20']);

    // The operator, from another address, is not held back by the attacker.
    const operator = await get(port, '127.0.0.2', TOKEN);
    expect(operator.status).toBe(200);
    expect(operator.body).toMatchObject({ user: USER, tier: 'trial' });

    // One failure's worth of budget comes back after 20 s; the token is checked again.
    t += 19_000;
    expect((await get(port, '127.0.0.1', TOKEN)).status).toBe(429);
    t += 1_000;
    expect((await get(port, '127.0.0.1', TOKEN)).status).toBe(200);
    expect((await get(port, '127.0.0.1', 'wrong-4')).status).toBe(401);
    expect((await get(port, '127.0.0.1', 'wrong-5')).status).toBe(429);

    expect(counters.snapshot()).toEqual({ ADMIN_DISABLED: 0, NOT_AUTHENTICATED: 4, RATE_LIMITED: 4 });
  });

  it('caps failures from all addresses together, so spreading a guess over many addresses does not help', async () => {
    const port = await start();
    // Five addresses, one failure each: none is near its own budget, the global one is spent.
    for (let a = 10; a < 15; a++) expect((await get(port, `127.0.0.${a}`, 'wrong')).status).toBe(401);
    const next = await get(port, '127.0.0.20', 'wrong');
    expect(next.status).toBe(429);
    expect(next.headers['retry-after']).toBe('12');
    t += 12_000;
    expect((await get(port, '127.0.0.20', TOKEN)).status).toBe(200);
  });

  it('never logs the path a client chose, and logs failed logins at most once per 10 s', async () => {
    const port = await start();
    for (let a = 30; a < 33; a++) await get(port, `127.0.0.${a}`, 'wrong', ATTACKER_PATH);
    // Rate-limited answers, and an authenticated request to an unknown admin path.
    for (let i = 0; i < 5; i++) await get(port, '127.0.0.40', 'wrong', ATTACKER_PATH);
    expect((await get(port, '127.0.0.41', TOKEN, ATTACKER_PATH)).status).toBe(429);
    t += 60_000;
    const unknown = await get(port, '127.0.0.41', TOKEN, ATTACKER_PATH);
    expect(unknown.status).toBe(404);

    const log = lines.join('\n');
    for (const needle of ['forged-entry-7f3a', 'passwd', '%0a', '%2f']) expect(log).not.toContain(needle);
    // 5 failed logins and 4 rate-limited requests within 10 s: one line of each.
    expect(lines).toEqual([
      JSON.stringify({ level: 'warn', msg: 'admin authentication failed', route: 'admin.unknown' }),
      JSON.stringify({ level: 'warn', msg: 'admin request rate limited', route: 'admin.unknown' }),
    ]);
  });
});
