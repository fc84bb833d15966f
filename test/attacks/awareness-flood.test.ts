import { RELAY_AWARENESS_ORIGIN, createIdentity, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { awarenessUpdate, JOURNAL, rawSubscribed, sealAs } from '../support/awareness.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { useTestScope } from '../support/scope.js';

const FLOOD_MS = 3_000;

describe('awareness flood', () => {
  const scope = useTestScope();

  it("one device flooding awareness delays no other user's crisis edit past 200 ms and leaves no backlog in the relay", async () => {
    const relay = await scope.relay();
    const probe = await startCrisisProbe(scope, relay.url, { intervalMs: 50, maxEdits: 10_000 });
    const idA = await createIdentity();
    const b = await scope.device(relay.url, idA);
    const pB = await b.client.provider(JOURNAL);
    scope.defer(() => pB.destroy());
    const idFlood = await linkNewDevice(idA);
    const flooder = await rawSubscribed(scope, relay.url, idFlood);
    await b.client.whenSynced();
    let applied = 0;
    pB.awareness.on('update', (_: unknown, origin: unknown) => {
      if (origin === RELAY_AWARENESS_ORIGIN) applied++;
    });
    const before = memoryOf(relay.pid);
    // ~40 KiB states (padded to 64 KiB, the cap), as fast as the socket takes them.
    const started = Date.now();
    let sent = 0;
    while (Date.now() - started < FLOOD_MS && sent < 50_000) {
      // Yield often: the probe's devices share this process's event loop.
      if (sent % 8 === 0 || flooder.ws.bufferedAmount > 4 * 1024 * 1024) await new Promise((resolve) => setTimeout(resolve, 1));
      const update = awarenessUpdate({ blob: 'x'.repeat(40 * 1024) }, 777, sent + 1);
      flooder.sendFrame({ type: 'awareness', aw: sealAs(idFlood, update, Date.now() + sent) });
      sent++;
    }
    const seconds = (Date.now() - started) / 1000;
    const after = memoryOf(relay.pid);
    const crisis = await probe.stop();
    const sentMiB = (sent * 88 * 1024) / 2 ** 20;
    console.log(
      `awareness flood: ${sent} frames (~${sentMiB.toFixed(0)} MiB) in ${seconds.toFixed(1)} s, ${applied} applied on the user's other device; ` +
        `other user's crisis edits p50 ${crisis.p50.toFixed(1)} ms, p99 ${crisis.p99.toFixed(1)} ms, max ${crisis.max.toFixed(1)} ms over ${crisis.received}; ` +
        `relay RSS ${before.rssMiB} → ${after.rssMiB} MiB (peak ${after.peakMiB})`,
    );
    expect(crisis.lost).toBe(0);
    expect(crisis.received).toBeGreaterThan(10);
    expect(crisis.p99).toBeLessThan(200);
    // The user's own other device got the rate (a burst of 60, then 30/s and 128 KiB/s), not the flood.
    expect(sent).toBeGreaterThan(300);
    expect(applied).toBeGreaterThan(0);
    expect(applied).toBeLessThanOrEqual(60 + Math.ceil(30 * (seconds + 1)));
    // Nothing of it piles up in the relay: its memory grew by far less than what was sent.
    expect(after.peakMiB - before.rssMiB).toBeLessThan(Math.min(150, sentMiB / 2));
    expect(isAlive(relay.pid)).toBe(true);
  });
});
