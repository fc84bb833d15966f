import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createIdentity, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { authenticate, healthStatus, openRawSocket } from '../support/raw-device.js';
import { logLines } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

/*
 * The relay's HTTP edge against a real relay process, with anyone on the network hostile and
 * unauthenticated: admin brute force, slow clients (the webhook flood is in test/attacks). Real sockets on 127.0.0.1;
 * Linux routes all of 127.0.0.0/8 to loopback, so a client bound to 127.0.0.2 is "another
 * address" to the relay.
 */

const scope = useTestScope();

const SECRET = `whsec_${randomBytes(24).toString('hex')}`;
const PAYMENTS_ENV = { KEEL_RELAY_WEBHOOK_SECRET: SECRET, KEEL_RELAY_PRICE_TIERS: JSON.stringify({ price_basic: 'basic', price_premium: 'premium' }) };

const nowSeconds = () => Math.floor(Date.now() / 1000);



describe('admin endpoint', () => {
  it('answers brute force with 429 + Retry-After without checking the token, never logs the path, and lets the operator in from elsewhere', async () => {
    const relay = await scope.relay();
    const user = (await createIdentity()).user.userId;
    const attackerPath = `/admin/tier-${randomBytes(6).toString('hex')}%0a{"msg":"forged"}`;
    const admin = (path: string, token: string, from = '127.0.0.1') =>
      new Promise<{ status: number; retryAfter: string | undefined; body: Record<string, unknown> }>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port: relay.port, path, localAddress: from, agent: false, headers: { authorization: `Bearer ${token}` }, timeout: 5_000 });
        req.on('response', (res) => {
          let text = '';
          res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'], body: JSON.parse(text) as Record<string, unknown> }));
        });
        req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
        req.on('error', reject);
        req.end();
      });

    // The default budget: 10 failed logins a minute from one address.
    for (let i = 0; i < 10; i++) expect((await admin(attackerPath, `guess-${i}`)).status).toBe(401);
    const limited = await admin(attackerPath, 'guess-10');
    expect(limited.status).toBe(429);
    expect(limited.body).toMatchObject({ error: 'RATE_LIMITED', message: expect.any(String) });
    expect(Number(limited.retryAfter)).toBeGreaterThanOrEqual(1);
    expect(Number(limited.retryAfter)).toBeLessThanOrEqual(6);
    // Even the right token gets 429 from the limited address: no signal for a guesser.
    expect((await admin(`/admin/tier?user=${user}`, relay.adminToken)).status).toBe(429);
    // The operator's own address is not locked out.
    const operator = await admin(`/admin/tier?user=${user}`, relay.adminToken, '127.0.0.2');
    expect(operator.status).toBe(200);
    expect(operator.body).toMatchObject({ user, tier: 'premium' });

    const output = relay.output();
    expect(output).not.toContain(attackerPath.slice('/admin/'.length, '/admin/'.length + 17));
    expect(output).not.toContain('forged');
    const failures = logLines(relay).filter((l) => l.msg === 'admin authentication failed');
    expect(failures).toEqual([expect.objectContaining({ level: 'warn', route: 'admin.unknown' })]);
  });
});

describe('slow clients', () => {
  const SLOW_ENV = {
    ...PAYMENTS_ENV,
    KEEL_RELAY_HTTP_HEADERS_TIMEOUT_MS: '500',
    KEEL_RELAY_HTTP_REQUEST_TIMEOUT_MS: '1000',
    KEEL_RELAY_HTTP_BODY_TIMEOUT_MS: '700',
  };

  /**
   * Opens a raw TCP connection, writes `head`, then trickles `drip` every 100 ms (at most 100
   * times) until the relay closes the connection. Resolves with what the relay sent and when it
   * closed, in ms after `head` was written.
   */
  const trickle = (port: number, head: string, drip: string) =>
    new Promise<{ reply: string; closedAfterMs: number }>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1');
      let reply = '';
      let startedAt = 0;
      let drips = 0;
      let ticker: NodeJS.Timeout | undefined;
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => (reply += chunk));
      socket.on('error', () => {}); // a reset after the answer is fine; 'close' follows
      socket.on('connect', () => {
        startedAt = performance.now();
        socket.write(head);
        ticker = setInterval(() => {
          if (++drips > 100 || socket.destroyed) return clearInterval(ticker);
          socket.write(drip);
        }, 100);
      });
      socket.on('close', () => {
        clearInterval(ticker);
        if (startedAt === 0) reject(new Error('could not connect'));
        else resolve({ reply, closedAfterMs: performance.now() - startedAt });
      });
    });

  it('disconnects slow headers and slow bodies within their timeouts, and leaves WebSocket devices connected', async () => {
    const relay = await scope.relay({ env: SLOW_ENV });
    const identity = await createIdentity();
    // A device connected through the whole test: upgraded sockets are not HTTP requests any more.
    const device = await openRawSocket(relay.url);
    scope.defer(() => device.close());
    await authenticate(device, identity);
    const deviceSince = performance.now();

    // Headers that never end: 408 and closed by the 500 ms headers timeout (Node checks every 125 ms).
    const headers = await trickle(relay.port, 'POST /webhooks/payments HTTP/1.1\r\nHost: relay\r\n', 'X-Slow: 1\r\n');
    expect(headers.reply).toMatch(/^HTTP\/1\.1 408 /);
    expect(headers.closedAfterMs).toBeGreaterThanOrEqual(450);
    expect(headers.closedAfterMs).toBeLessThan(1_000);

    // Bodies that never end, on both endpoints that read one: 408 BODY_TIMEOUT and closed at 700 ms.
    const bodies = {
      webhook: `POST /webhooks/payments HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nStripe-Signature: t=${nowSeconds()},v1=${'0'.repeat(64)}\r\nContent-Length: 4096\r\n\r\n{`,
      admin: `POST /admin/tier HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ${relay.adminToken}\r\nContent-Length: 4096\r\n\r\n{`,
    };
    for (const [what, head] of Object.entries(bodies)) {
      const slow = await trickle(relay.port, head, ' ');
      expect(slow.reply, what).toMatch(/^HTTP\/1\.1 408 /);
      expect(slow.reply, what).toMatch(/connection: close/i);
      expect(slow.reply, what).toContain('"error":"BODY_TIMEOUT"');
      expect(slow.closedAfterMs, what).toBeGreaterThanOrEqual(650);
      expect(slow.closedAfterMs, what).toBeLessThan(1_200);
    }

    // Longer than the request timeout (and one check interval) has passed, and the device is still on.
    expect(performance.now() - deviceSince).toBeGreaterThan(1_000 + 250);
    expect(device.isOpen).toBe(true);
    expect(await healthStatus(relay.port)).toBe(200);
  });
});

describe('health endpoint', () => {
  it('says the relay is up, with its id and uptime, and nothing about who is connected', async () => {
    const relay = await scope.relay({ args: ['--relay-id', 'relay-health-test'] });
    const identity = await createIdentity();
    await scope.device(relay.url, identity);
    await scope.device(relay.url, await linkNewDevice(identity));
    const response = await fetch(`${relay.httpUrl}/healthz`, { signal: AbortSignal.timeout(2_000) });
    expect(response.status).toBe(200);
    const body = (await response.json()) as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual(['relay', 'status', 'uptimeSeconds']);
    expect(body).toMatchObject({ status: 'ok', relay: 'relay-health-test', uptimeSeconds: expect.any(Number) });
  });
});

describe('process failures', () => {
  it('logs an unhandled rejection and keeps serving; exits 1 on an uncaught exception, and restarts cleanly', async () => {
    // Injected into the relay process: SIGUSR2 drops a rejected promise, SIGHUP throws on the event loop.
    const dir = mkdtempSync(join(tmpdir(), 'keel-fault-'));
    scope.defer(() => rmSync(dir, { recursive: true, force: true }));
    const hook = join(dir, 'faults.mjs');
    writeFileSync(
      hook,
      `process.on('SIGUSR2', () => { Promise.reject(new Error('injected rejection')); });\n` +
        `process.on('SIGHUP', () => { setImmediate(() => { throw new Error('injected exception'); }); });\n`,
    );
    const env = { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(hook).href}`.trim() };
    const relay = await scope.relay({ env });

    process.kill(relay.pid, 'SIGUSR2');
    await waitFor(() => relay.output().includes('unhandled promise rejection'), 2_000, 'the rejection logged');
    expect(await healthStatus(relay.port)).toBe(200);
    const rejection = logLines(relay).find((l) => l.msg === 'unhandled promise rejection; relay continues');
    expect(rejection).toMatchObject({ level: 'error', error: 'Error: injected rejection' });

    process.kill(relay.pid, 'SIGHUP');
    const code = await Promise.race([relay.exited, new Promise((resolve) => setTimeout(() => resolve('still running'), 5_000))]);
    expect(code).toBe(1);
    const crash = logLines(relay).find((l) => l.msg === 'uncaught exception; relay exits for its supervisor to restart it');
    expect(crash).toMatchObject({ level: 'error', error: 'Error: injected exception' });
    // Message only: no stack trace (file paths, and whatever a frame's arguments held).
    expect(relay.output()).not.toContain('faults.mjs');

    // What a supervisor does next: the same database, a new process.
    const again = await scope.relay({ dir: relay.dir, port: relay.port });
    expect(await healthStatus(again.port)).toBe(200);
  });
});
