import { type ClientError, type ClientStatus, createClient, createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { RelayWebSocket } from '@keel/client/node';
import { ErrorCode } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { startProxy } from '../support/proxy.js';
import { useTestScope } from '../support/scope.js';

/**
 * A dead link — a proxy that keeps the TCP connection open and silently drops what the device
 * sends — looks healthy to the socket. The client finds it by itself (a ping after `ready`,
 * no pong in time), goes offline, reconnects with backoff, and what was edited meanwhile
 * arrives once the path heals.
 */

const scope = useTestScope();
const PLAN = { class: 'safety_plan', name: 'main' } as const;

describe('a dead link', () => {
  it('is found within 10 s with the default liveness settings; edits made meanwhile arrive once it heals', async () => {
    const relay = await scope.relay();
    const proxy = await startProxy(relay.port);
    scope.defer(() => proxy.close());
    const idA = await createIdentity();
    const a = await scope.device(proxy.url, idA);
    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const planA = await a.client.open(PLAN);
    const planB = await b.client.open(PLAN);
    await a.client.whenSynced();
    const statuses: ClientStatus[] = [];
    a.client.on('status', (s) => statuses.push(s));
    const contactBefore = a.client.lastContactAt;
    expect(contactBefore).toBeGreaterThan(0);

    const cut = Date.now();
    proxy.setBlackhole(true);
    planA.getMap('plan').set('call', '988');
    await waitFor(() => a.errors.some((e) => e.code === ErrorCode.LINK_DEAD), 10_000, 'the dead link found');
    const foundAfter = Date.now() - cut;
    expect(foundAfter).toBeLessThan(10_000);
    expect(statuses).toContain('offline');
    expect(a.client.status).not.toBe('synced');
    expect(planB.getMap('plan').get('call')).toBeUndefined();

    proxy.setBlackhole(false);
    await waitFor(() => planB.getMap('plan').get('call') === '988', 15_000, 'the edit at B once the path healed');
    await a.client.whenSynced();
    expect(a.client.lastContactAt!).toBeGreaterThan(contactBefore!);
    console.info('dead link found after', foundAfter, 'ms');
    expect(a.errors.every((e) => e.code === ErrorCode.LINK_DEAD || e.code === ErrorCode.AUTH_TIMEOUT)).toBe(true);
  }, 40_000);

  it('a live but idle link is never taken for dead: pings are answered, and the last contact stays fresh', async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA, undefined, { liveness: { intervalMs: 200, timeoutMs: 500 } });
    await a.client.open(PLAN);
    await a.client.whenSynced();
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(a.errors).toEqual([]);
    expect(a.client.status).toBe('synced');
    // Pinged every 200 ms and answered: the last contact is never older than a ping or two.
    expect(Date.now() - a.client.lastContactAt!).toBeLessThan(1_000);
  });

  it('a client whose own process stalls right after a ping (the pong arrives meanwhile) does not call a live link dead', async () => {
    const relay = await scope.relay();
    // A socket that holds this process for 1.2 s just after every fifth ping leaves it: the
    // pong comes back during the stall, and the ping's 400 ms deadline is long past when the
    // process runs again (a long task, a throttled tab, a phone waking up).
    let pings = 0;
    let stalls = 0;
    class StallingSocket extends RelayWebSocket {
      override send(data: Parameters<RelayWebSocket['send']>[0]): void {
        super.send(data);
        if (typeof data === 'string' && data.startsWith('{"type":"ping"') && ++pings % 5 === 0 && stalls < 3) {
          stalls++;
          // Outside the timers phase (as a big update applied in a message handler would be), so
          // the next turn runs expired timers before it reads the socket.
          setImmediate(() => {
            const until = Date.now() + 1_200;
            while (Date.now() < until) {
              // held
            }
          });
        }
      }
    }
    const client = await createClient({
      url: relay.url,
      identity: await createIdentity(),
      storage: createMemoryStore(),
      WebSocket: StallingSocket,
      liveness: { intervalMs: 100, timeoutMs: 400 },
    });
    scope.defer(() => client.close());
    const errors: ClientError[] = [];
    client.on('error', (e) => errors.push(e));
    await client.open(PLAN);
    await client.whenSynced();
    await waitFor(() => stalls === 3, 15_000, 'three stalls');
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(errors).toEqual([]);
    expect(client.status).toBe('synced');
  }, 30_000);
});
