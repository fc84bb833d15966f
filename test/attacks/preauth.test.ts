import { createIdentity, linkNewDevice, serializeIdentity } from '@keel/client';
import { CloseCode, ErrorCode } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { authenticate, openRawSocket } from '../support/raw-device.js';
import { errorLinesBesidesCrisisAlerts } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

/**
 * Finding 1 of step 5: before authentication a stranger could make the relay parse 32 MiB
 * frames (two of them: ~10 s of stalled crisis delivery, +1.6 GB of memory). Each test attacks
 * a real relay process from a separate process while an honest user's crisis edits are timed.
 */
describe('attack: unauthenticated memory and CPU', () => {
  const scope = useTestScope();

  it('refuses 30 MiB frames before authentication at their header: crisis p99 < 200 ms, memory flat, relay alive', async () => {
    const relay = await scope.relay();
    const probe = await startCrisisProbe(scope, relay.url);
    const before = memoryOf(relay.pid);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      // Each waits for the relay's close (up to 5 s) instead of closing first: on a loaded machine the
      // send callback can fire before the relay has read the header, and an attacker's own 1000 then
      // raced the relay's 1009.
      sockets: Array.from({ length: 4 }, () => ({ frames: [{ junk: 30 * 1024 * 1024 }], hold: 5_000 })),
      waves: 8,
      durationMs: 10_000,
    });
    const report = await attacker.done;
    const crisis = await probe.stop();
    const after = memoryOf(relay.pid);
    console.info('pre-auth 30 MiB frames', { report: { ...report, errors: report.errors.length }, crisis, before, after });

    expect(report.opened).toBe(32);
    // Every one of them was cut for its size, none was read.
    expect(report.closes[CloseCode.MESSAGE_TOO_BIG]).toBe(32);
    expect(crisis.lost).toBe(0);
    expect(crisis.received).toBeGreaterThan(20);
    expect(crisis.p99).toBeLessThan(200);
    // Before: +1.6 GB. Now the relay never holds more than a few KiB per unauthenticated socket.
    expect(after.peakMiB - before.rssMiB).toBeLessThan(100);
    expect(isAlive(relay.pid)).toBe(true);
    expect(errorLinesBesidesCrisisAlerts(relay.output())).toEqual([]);
  });

  it('reads only hello and auth before authentication, and a flood of certificate-chain handshakes waits its turn', async () => {
    const relay = await scope.relay();
    // Handshakes that cost the most: a new user's device presenting the longest certificate
    // chain (root + 7 links), so the relay checks 8 signatures and registers 8 devices.
    const strangers = await Promise.all(
      Array.from({ length: 20 }, async () => {
        let tip = await createIdentity();
        for (let i = 0; i < 7; i++) tip = await linkNewDevice(tip);
        return serializeIdentity(tip);
      }),
    );
    // Built before the probe starts: the probe's devices share this event loop.
    const probe = await startCrisisProbe(scope, relay.url);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      // Authenticated: each registers its chain; then a burst of frames an unauthenticated peer may not send.
      sockets: strangers.map((auth) => ({ auth, frames: [] })),
      waves: 5,
      durationMs: 10_000,
    });
    const report = await attacker.done;
    // Frames other than hello/auth before authentication: answered, never acted on.
    const s = await openRawSocket(relay.url);
    scope.defer(() => s.close());
    for (const type of ['sub', 'push', 'register', 'revoke', 'epoch', 'pair-open']) {
      s.sendFrame({ type, docs: [], envs: [] });
      expect((await s.nextOf('error')).code).toBe(ErrorCode.NOT_AUTHENTICATED);
    }
    await authenticate(s, await createIdentity());
    const crisis = await probe.stop();
    console.info('chain handshakes', { report: { ...report, errors: report.errors.length }, crisis });
    expect(report.authenticated).toBe(100);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
  });

  it('caps unauthenticated connections (1013 past the cap) without touching authenticated devices', async () => {
    const relay = await scope.relay({ env: { KEEL_RELAY_MAX_PENDING_CONNECTIONS: '16', KEEL_RELAY_AUTH_TIMEOUT_MS: '3000' } });
    const probe = await startCrisisProbe(scope, relay.url);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      // Sockets that open and say nothing, held until the plan ends.
      sockets: Array.from({ length: 40 }, () => ({ frames: [], hold: true })),
      durationMs: 1_500,
    });
    const report = await attacker.done;
    const crisis = await probe.stop();
    console.info('idle unauthenticated sockets', { report: { ...report, errors: report.errors.length }, crisis });
    expect(report.opened).toBe(40);
    expect(report.closes[CloseCode.TRY_AGAIN_LATER]).toBe(24);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
    // Once they are gone, new devices connect again.
    const s = await openRawSocket(relay.url);
    scope.defer(() => s.close());
    await authenticate(s, await createIdentity());
  });
});
