import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createIdentity, linkNewDevice } from '@keel/client';
import type { Seq } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { type FrameOf, connectRawDevice, docRef } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

const ALERT_SECRET = 'crisis-alert-secret-0123456789';
const PLAN = { class: 'safety_plan', name: 'main' } as const;

/** The operator's alert endpoint: a real HTTP server on loopback recording each POST. */
const alertEndpoint = async (scope: ReturnType<typeof useTestScope>) => {
  const posts: { headers: IncomingMessage['headers']; body: { type: string; [k: string]: unknown } }[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      posts.push({ headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as { type: string } });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  scope.defer(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/keel-alerts`, posts };
};

const alertLines = (output: string, kind: string) =>
  output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as { level: string; msg: string })
    .filter((line) => line.level === 'error' && line.msg === `alert: ${kind}`);

/**
 * Step 8: the crisis SLA is watched, not only benchmarked. Devices confirm each crisis-lane
 * entry they apply; the relay times it and alerts its operator when one is late or never comes.
 */
describe('a watched crisis SLA', () => {
  const scope = useTestScope();

  it('a crisis sync applied within the SLA raises nothing; one a slow receiver applies after 300 ms, or never, raises an alert on every channel', async () => {
    const endpoint = await alertEndpoint(scope);
    const relay = await scope.relay({
      args: ['--alert-url', endpoint.url],
      env: { KEEL_RELAY_ALERT_SECRET: ALERT_SECRET, KEEL_RELAY_CRISIS_RECEIPT_TIMEOUT_MS: '1500' },
    });
    const user = await createIdentity();
    const phone = await scope.device(relay.url, user);
    const laptop = await scope.device(relay.url, await linkNewDevice(user));
    const planA = await phone.client.open(PLAN);
    const planB = await laptop.client.open(PLAN);
    await Promise.all([phone.client.whenSynced(), laptop.client.whenSynced()]);

    // A normal crisis sync: applied on the laptop in a few ms, its receipt well inside 200 ms.
    for (let i = 0; i < 5; i++) {
      planA.getMap('plan').set('step', `breathe ${i}`);
      await waitFor(() => planB.getMap('plan').get('step') === `breathe ${i}`, 2_000, 'the crisis edit');
    }
    await phone.client.flush();
    await new Promise((resolve) => setTimeout(resolve, 1_800));
    expect(endpoint.posts).toEqual([]);
    expect(alertLines(relay.output(), 'crisis_sla_breach')).toEqual([]);
    expect(alertLines(relay.output(), 'crisis_receipt_missing')).toEqual([]);

    // Two more devices of the user, under the test's control: one confirms 300 ms late, one never.
    const slowIdentity = await linkNewDevice(user);
    const silentIdentity = await linkNewDevice(user);
    const slow = await connectRawDevice(relay.url, slowIdentity);
    const silent = await connectRawDevice(relay.url, silentIdentity);
    scope.defer(() => slow.close());
    scope.defer(() => silent.close());
    const doc = docRef(user, PLAN.class, PLAN.name).id;
    let caughtUp = 0;
    for (const raw of [slow, silent]) {
      raw.send(JSON.stringify({ type: 'sub', docs: [{ doc, after: 0 }] }));
      caughtUp = ((await raw.next((f) => f.type === 'synced' && f.doc === doc, 5_000)) as FrameOf<'synced'>).seq;
    }
    // The live entry, not the catch-up before `synced` (which no SLA covers).
    const live = slow.next((f) => f.type === 'updates' && f.doc === doc && f.items.some((item) => item.seq > caughtUp), 5_000);
    planA.getMap('plan').set('step', 'call 988');
    const updates = (await live) as FrameOf<'updates'>;
    await new Promise((resolve) => setTimeout(resolve, 300));
    slow.send(JSON.stringify({ type: 'receipt', doc, seqs: updates.items.map((item) => item.seq as Seq) }));

    await waitFor(() => endpoint.posts.some((p) => p.body.type === 'crisis_sla_breach'), 5_000, 'the breach alert');
    await waitFor(() => endpoint.posts.some((p) => p.body.type === 'crisis_receipt_missing'), 5_000, 'the missing-receipt alert');
    const breach = endpoint.posts.find((p) => p.body.type === 'crisis_sla_breach')!;
    expect(breach.body).toMatchObject({ user: user.user.userId, device: slowIdentity.device.deviceId, doc, slaMs: 200 });
    expect(breach.body.latencyMs as number).toBeGreaterThanOrEqual(300);
    expect(breach.headers['keel-signature']).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
    const missing = endpoint.posts.find((p) => p.body.type === 'crisis_receipt_missing')!;
    expect(missing.body).toMatchObject({ user: user.user.userId, device: silentIdentity.device.deviceId, doc });
    // Only those two: the laptop confirmed the same entry in time.
    expect(endpoint.posts.map((p) => p.body.type).sort()).toEqual(['crisis_receipt_missing', 'crisis_sla_breach']);
    expect(alertLines(relay.output(), 'crisis_sla_breach')).toHaveLength(1);
    expect(alertLines(relay.output(), 'crisis_receipt_missing')).toHaveLength(1);
    // The third channel: the alert counters and the measured latencies on /metrics.
    const metrics = await (await fetch(`${relay.httpUrl}/metrics`)).text();
    const sample = (name: string) => Number(metrics.split('\n').find((line) => line.startsWith(`${name} `))?.split(' ')[1] ?? Number.NaN);
    expect(sample('keel_alerts_total{kind="crisis_sla_breach"}')).toBe(1);
    expect(sample('keel_alerts_total{kind="crisis_receipt_missing"}')).toBe(1);
    expect(sample('keel_crisis_sla_breaches_total')).toBe(1);
    expect(sample('keel_crisis_receipts_missing_total')).toBe(1);
    // The laptop's six receipts and the slow device's one.
    expect(sample('keel_crisis_e2e_latency_ms_count')).toBe(7);
  });
});
