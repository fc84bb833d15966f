import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_TIERS } from '@keel/engine';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { RelayConfigSchema } from '../src/config.js';
import { createRelayEvents } from '../src/events/relay-events.js';
import { silentLogger } from '../src/log.js';
import { createLogThrottle } from '../src/log-throttle.js';
import { createRelayMetrics } from '../src/observe/metrics.js';
import { createMetricsRoute, isLoopbackHost } from '../src/server/metrics-route.js';
import { createRefusalCounters } from '../src/server/refusal-counters.js';
import { METRICS_REFUSALS } from '../src/server/http-codes.js';
import { type Relay, startRelay } from '../src/server/relay-server.js';
import { openSqliteStore } from '../src/storage/sqlite-store.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const get = async (url: string, headers: Record<string, string> = {}) => {
  const response = await fetch(url, { headers, signal: AbortSignal.timeout(5_000) });
  return { status: response.status, text: await response.text() };
};

/** A relay in this process on 127.0.0.1, on a real SQLite file; closed and removed after the test. */
const relayOnDisk = async (): Promise<{ relay: Relay; store: ReturnType<typeof openSqliteStore> }> => {
  const dir = mkdtempSync(join(tmpdir(), 'keel-observe-'));
  const config = RelayConfigSchema.parse({ port: 0, db: join(dir, 'relay.db') });
  const store = openSqliteStore({ path: config.db });
  const relay = await startRelay({ config, store, log: silentLogger });
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  cleanups.push(() => relay.close());
  return { relay, store };
};

describe('GET /readyz', () => {
  it('is 200 while the store answers, 503 once it does not (and /healthz says so too)', async () => {
    const { relay, store } = await relayOnDisk();
    expect((await get(`${relay.httpUrl}/readyz`)).status).toBe(200);
    await store.close();
    const ready = await get(`${relay.httpUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(JSON.parse(ready.text)).toMatchObject({ status: 'unavailable', error: 'NOT_READY', reason: 'store unavailable' });
    expect((await get(`${relay.httpUrl}/healthz`)).status).toBe(503);
  });

  it('is 503 as soon as the relay starts shutting down, while devices are still being let go', async () => {
    const { relay } = await relayOnDisk();
    // A device that stops reading: the relay waits out its close grace (1 s) before cutting it.
    const ws = new WebSocket(relay.url, { perMessageDeflate: false });
    cleanups.push(() => ws.terminate());
    await once(ws, 'open');
    ws.pause();
    const closing = relay.close();
    const ready = await get(`${relay.httpUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(JSON.parse(ready.text)).toMatchObject({ reason: 'shutting down' });
    await closing;
  });
});

describe('GET /metrics without a token', () => {
  it('knows a loopback address when it sees one', () => {
    for (const host of ['127.0.0.1', '127.8.9.10', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) expect(isLoopbackHost(host), host).toBe(true);
    for (const host of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.2', 'relay.example.org', '128.0.0.1', '::ffff:10.0.0.1']) expect(isLoopbackHost(host), host).toBe(false);
  });

  it('is open on a loopback-bound relay and refused (403, counted) on one bound elsewhere', async () => {
    const events = createRelayEvents({ log: silentLogger, now: Date.now });
    const metrics = createRelayMetrics({ events, tiers: DEFAULT_TIERS, probes: { workQueued: () => 0, outboundQueuedByLane: () => [] } });
    cleanups.push(() => metrics.stop());
    const refusals = createRefusalCounters(METRICS_REFUSALS);
    const throttle = createLogThrottle({ log: silentLogger, now: Date.now });
    const serve = async (host: string): Promise<string> => {
      const route = createMetricsRoute({ metrics, token: undefined, host, throttle, refusals });
      const server: Server = createServer((req, res) => void route(req, res));
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
      return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    };
    const loopback = await get(await serve('127.0.0.1'));
    expect(loopback.status).toBe(200);
    expect(loopback.text).toContain('# TYPE keel_connections gauge');
    // Bound to every interface (the route only reads the configured address): no token, no metrics.
    const exposed = await get(await serve('0.0.0.0'), { authorization: 'Bearer anything-at-all-goes-here-1234' });
    expect(exposed.status).toBe(403);
    expect(JSON.parse(exposed.text)).toMatchObject({ error: 'METRICS_DISABLED' });
    expect(exposed.text).not.toContain('keel_');
    expect(refusals.snapshot()).toEqual({ METRICS_DISABLED: 1, NOT_AUTHENTICATED: 0 });
  });
});
