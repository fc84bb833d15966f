import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createIdentity } from '@keel/client';
import { afterEach, describe, expect, it } from 'vitest';
import { connectDevice, waitFor } from '../support/devices.js';

/*
 * The demo's dev server (apps/demo/server.mjs) as a process: it starts a real relay whose users
 * begin on trial, tells the page where it is, and turns the page's payment buttons into webhooks
 * the relay accepts (signed with a secret only the server holds) — and nothing else.
 */
const SERVER = fileURLToPath(new URL('../../apps/demo/server.mjs', import.meta.url));

interface DevServer {
  readonly child: ChildProcess;
  readonly httpUrl: string;
  readonly tempDir: string;
  readonly exited: Promise<number | null>;
}

const running: DevServer[] = [];
afterEach(async () => {
  for (const server of running.splice(0)) {
    // SIGTERM: the server stops its relay and removes its temporary database; SIGKILL only if stuck.
    if (server.child.exitCode === null) server.child.kill('SIGTERM');
    const timer = setTimeout(() => server.child.kill('SIGKILL'), 5_000);
    await server.exited;
    clearTimeout(timer);
  }
});

const startDevServer = async (): Promise<DevServer> => {
  const child = spawn(process.execPath, [SERVER, '--port', '0', '--relay-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const server = { child, exited } as { child: ChildProcess; exited: Promise<number | null> };
  running.push(server as DevServer);
  await waitFor(() => /open http:\/\/127\.0\.0\.1:\d+\//.test(out) || child.exitCode !== null, 15_000, 'the dev server listening');
  const httpUrl = /open (http:\/\/127\.0\.0\.1:\d+)\//.exec(out)?.[1];
  const tempDir = /temporary in (\S+),/.exec(out)?.[1];
  if (!httpUrl || !tempDir) throw new Error(`dev server did not start:\n${out}`);
  return Object.assign(server, { httpUrl, tempDir });
};

const post = async (server: DevServer, body: unknown, headers: Record<string, string> = { 'content-type': 'application/json' }) => {
  const response = await fetch(`${server.httpUrl}/dev/webhook`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
};

describe('the demo dev server', () => {
  it('starts users on trial and turns the page’s payment buttons into signed webhooks the relay applies', async () => {
    const server = await startDevServer();
    const config = (await (await fetch(`${server.httpUrl}/config.json`)).json()) as { relayUrl: string; dev: boolean };
    expect(config).toMatchObject({ relayUrl: expect.stringMatching(/^ws:\/\/127\.0\.0\.1:\d+$/), dev: true });
    const identity = await createIdentity();
    const device = await connectDevice(config.relayUrl, identity);
    try {
      await device.client.whenSynced();
      expect(device.client.tier.name).toBe('trial');
      const user = identity.user.userId;

      expect(await post(server, { event: 'upgrade', user })).toEqual({ status: 200, body: { received: true, outcome: 'tier_changed' } });
      await waitFor(() => device.client.tier.name === 'premium', 2_000, 'premium');
      const failedAt = Date.now();
      expect((await post(server, { event: 'payment_failed', user })).body).toMatchObject({ outcome: 'grace_started' });
      await waitFor(() => device.client.tier.name === 'grace_period', 2_000, 'grace');
      // Contract 6: the device learns when the grace period ends (premium: 14 days).
      expect(Math.abs(device.client.tier.graceEndsAt! - (failedAt + 14 * 24 * 3600_000))).toBeLessThan(60_000);
      expect((await post(server, { event: 'recovered', user })).body).toMatchObject({ outcome: 'recovered' });
      await waitFor(() => device.client.tier.name === 'premium', 2_000, 'premium again');
      expect((await post(server, { event: 'expired', user })).body).toMatchObject({ received: true });
      await waitFor(() => device.client.tier.name === 'trial', 2_000, 'trial after the subscription ended');
      expect(device.errors).toEqual([]);
    } finally {
      await device.client.close();
    }
  });

  it('refuses malformed, foreign-origin and non-JSON requests with typed errors, and cleans up on SIGTERM', async () => {
    const server = await startDevServer();
    expect(await post(server, { event: 'refund_everything', user: 'u_x' })).toMatchObject({ status: 400, body: { error: 'SCHEMA' } });
    expect(await post(server, { event: 'upgrade', user: 'u x; drop' })).toMatchObject({ status: 400, body: { error: 'SCHEMA' } });
    expect(await post(server, '{not json')).toMatchObject({ status: 400, body: { error: 'BAD_JSON' } });
    expect(await post(server, 'x'.repeat(10_000))).toMatchObject({ status: 413, body: { error: 'TOO_LARGE' } });
    expect(await post(server, '{}', { 'content-type': 'text/plain' })).toMatchObject({ status: 415 });
    expect(await post(server, { event: 'upgrade', user: 'u_x' }, { 'content-type': 'application/json', origin: 'http://evil.example' })).toMatchObject({
      status: 403,
      body: { error: 'FOREIGN_ORIGIN' },
    });
    const stray = await fetch(`${server.httpUrl}/dev/webhook`);
    expect(stray.status).toBe(405);
    expect(existsSync(server.tempDir)).toBe(true);
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    expect(existsSync(server.tempDir)).toBe(false);
  });
});
