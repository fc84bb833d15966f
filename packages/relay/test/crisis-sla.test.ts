import { type AddressInfo, createServer } from 'node:net';
import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import type { DeviceId, DocId, Seq, UserId } from '@keel/engine';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger, type LogFields, type Logger } from '../src/log.js';
import { ALERT_SIGNATURE_HEADER, type Alert, createAlerter } from '../src/observe/alerts.js';
import { type CrisisMeasure, type CrisisMissing, createCrisisSlaWatch } from '../src/observe/crisis-sla.js';
import { verifyStripeSignature } from '../src/webhooks/signature.js';
import { createFakeClock } from './fake-clock.js';

const USER = 'u1' as UserId;
const PHONE = 'phone' as DeviceId;
const LAPTOP = 'laptop' as DeviceId;
const DOC = 'doc' as DocId;
const seq = (n: number) => n as Seq;

const watch = (options: { maxPending?: number } = {}) => {
  const clock = createFakeClock(1_000_000);
  const measured: CrisisMeasure[] = [];
  const missing: CrisisMissing[] = [];
  const sla = createCrisisSlaWatch({
    now: clock.now,
    timers: clock.timers,
    missingAfterMs: 5_000,
    ...options,
    onMeasured: (m) => measured.push(m),
    onMissing: (m) => missing.push(m),
  });
  return { clock, sla, measured, missing };
};

describe('crisis SLA watch (fake clock)', () => {
  it('measures each awaited entry from reaching the relay to the receipt, and flags only those over 200 ms', async () => {
    const { clock, sla, measured, missing } = watch();
    const writtenAt = clock.now();
    await clock.advance(3);
    sla.sent(USER, LAPTOP, DOC, [{ seq: seq(1), receivedAt: writtenAt }, { seq: seq(2), receivedAt: writtenAt }]);
    await clock.advance(40);
    sla.receipt(LAPTOP, DOC, [seq(1)]);
    await clock.advance(200);
    sla.receipt(LAPTOP, DOC, [seq(2), seq(3)]);
    expect(measured).toEqual([
      // 3 ms of it inside the relay (written → queued to the laptop), the rest out and back.
      { user: USER, device: LAPTOP, doc: DOC, seq: 1, latencyMs: 43, relayMs: 3, heldForCatchUp: false, breached: false },
      { user: USER, device: LAPTOP, doc: DOC, seq: 2, latencyMs: 243, relayMs: 3, heldForCatchUp: false, breached: true },
    ]);
    // A receipt again, or for a seq nobody waits for (caught up later), measures nothing.
    sla.receipt(LAPTOP, DOC, [seq(1)]);
    sla.receipt(PHONE, DOC, [seq(2)]);
    await clock.advance(10_000);
    expect(measured).toHaveLength(2);
    expect(missing).toEqual([]);
    expect(sla.stats().pending).toBe(0);
    expect(clock.pending()).toBe(0);
  });

  it('says when an entry went out with the device\'s catch-up of the document rather than live', async () => {
    const { clock, sla, measured } = watch();
    const writtenAt = clock.now();
    await clock.advance(2);
    sla.sent(USER, LAPTOP, DOC, [{ seq: seq(1), receivedAt: writtenAt }], false);
    await clock.advance(400);
    sla.receipt(LAPTOP, DOC, [seq(1)]);
    expect(measured).toEqual([{ user: USER, device: LAPTOP, doc: DOC, seq: 1, latencyMs: 402, relayMs: 2, heldForCatchUp: true, breached: true }]);
  });

  it('reports a receipt that never comes from a device that stays connected, and forgets a device that leaves', async () => {
    const { clock, sla, missing } = watch();
    sla.sent(USER, LAPTOP, DOC, [{ seq: seq(7), receivedAt: clock.now() }]);
    sla.sent(USER, PHONE, DOC, [{ seq: seq(7), receivedAt: clock.now() }]);
    await clock.advance(1_000);
    sla.deviceGone(PHONE);
    await clock.advance(3_999);
    expect(missing).toEqual([]);
    await clock.advance(1);
    expect(missing).toEqual([{ user: USER, device: LAPTOP, doc: DOC, seq: 7, waitedMs: 5_000 }]);
    expect(sla.stats().pending).toBe(0);
    expect(clock.pending()).toBe(0);
  });

  it('holds at most maxPending waits, giving up the oldest (counted), however many entries a device floods', async () => {
    const { clock, sla, measured } = watch({ maxPending: 100 });
    sla.sent(
      USER,
      LAPTOP,
      DOC,
      Array.from({ length: 10_000 }, (_, i) => ({ seq: seq(i + 1), receivedAt: clock.now() })),
    );
    expect(sla.stats()).toEqual({ pending: 100, unwatched: 9_900 });
    sla.receipt(LAPTOP, DOC, [seq(10_000), seq(1)]);
    expect(measured.map((m) => m.seq)).toEqual([10_000]);
    sla.close();
    expect(clock.pending()).toBe(0);
  });
});

/** A real HTTP endpoint on loopback that records what it is sent and answers `status()`. */
const startReceiver = async (status: () => number) => {
  const bodies: { headers: IncomingMessage['headers']; body: string }[] = [];
  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      bodies.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(status()).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/alerts`, bodies, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
};

const recordingLogger = () => {
  const lines: { level: string; msg: string; fields: LogFields | undefined }[] = [];
  const log: Logger = { log: (level, msg, fields) => void lines.push({ level, msg, fields }) };
  return { log, lines };
};

describe('alerts', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  const breach: Alert = { kind: 'crisis_sla_breach', user: 'u1', device: 'laptop', doc: 'doc', seq: 3, latencyMs: 340, relayMs: 12, heldForCatchUp: false, slaMs: 200 };

  it('raises on three channels: an error line, a count, and a POST the operator can verify with the shared secret', async () => {
    const receiver = await startReceiver(() => 204);
    cleanups.push(receiver.close);
    const { log, lines } = recordingLogger();
    const counted: string[] = [];
    const secret = 'alert-secret-0123456789';
    const alerter = createAlerter({ log, target: { url: receiver.url, secret }, now: Date.now, timers: { setTimeout, clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout) }, count: (k) => counted.push(k) });
    cleanups.push(() => alerter.close());
    alerter.raise(breach);
    await alerter.idle();
    expect(lines).toEqual([{ level: 'error', msg: 'alert: crisis_sla_breach', fields: { user: 'u1', device: 'laptop', doc: 'doc', seq: 3, latencyMs: 340, relayMs: 12, heldForCatchUp: false, slaMs: 200 } }]);
    expect(counted).toEqual(['crisis_sla_breach']);
    expect(receiver.bodies).toHaveLength(1);
    const { headers, body } = receiver.bodies[0]!;
    expect(JSON.parse(body)).toMatchObject({ type: 'crisis_sla_breach', user: 'u1', latencyMs: 340 });
    const check = verifyStripeSignature(Buffer.from(body), headers[ALERT_SIGNATURE_HEADER] as string, secret, Math.floor(Date.now() / 1000));
    expect(check.ok).toBe(true);
    expect(verifyStripeSignature(Buffer.from(body), headers[ALERT_SIGNATURE_HEADER] as string, 'another-secret-0123456', Math.floor(Date.now() / 1000)).ok).toBe(false);
    expect(alerter.stats()).toEqual({ queued: 0, delivered: 1, failed: 0, dropped: 0 });
  });

  it('retries a failing endpoint a bounded number of times, keeps a bounded queue, and never throws at the raiser', async () => {
    const receiver = await startReceiver(() => 500);
    cleanups.push(receiver.close);
    const clock = createFakeClock(Date.now());
    const alerter = createAlerter({ log: silentLogger, target: { url: receiver.url, secret: 'alert-secret-0123456789' }, now: clock.now, timers: clock.timers, maxQueued: 2, attempts: 3 });
    cleanups.push(() => alerter.close());
    for (let i = 0; i < 5; i++) alerter.raise({ ...breach, seq: i });
    expect(alerter.stats().dropped).toBe(3);
    // Each failed attempt waits on the fake clock; advancing it lets the retries run.
    for (let i = 0; i < 40 && alerter.stats().queued > 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      await clock.advance(20_000);
    }
    await alerter.idle();
    expect(alerter.stats()).toEqual({ queued: 0, delivered: 0, failed: 2, dropped: 3 });
    expect(receiver.bodies).toHaveLength(6);
  });

  it('gives a dead endpoint (nothing listening) up without blocking the raiser', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const clock = createFakeClock(Date.now());
    const alerter = createAlerter({ log: silentLogger, target: { url: `http://127.0.0.1:${port}/`, secret: 'alert-secret-0123456789' }, now: clock.now, timers: clock.timers, attempts: 1 });
    cleanups.push(() => alerter.close());
    const t0 = performance.now();
    alerter.raise(breach);
    expect(performance.now() - t0).toBeLessThan(50);
    await alerter.idle();
    expect(alerter.stats()).toMatchObject({ delivered: 0, failed: 1 });
  });
});
