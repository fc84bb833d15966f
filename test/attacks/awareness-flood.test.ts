import { RELAY_AWARENESS_ORIGIN, createIdentity, linkNewDevice, serializeIdentity } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { JOURNAL, awarenessUpdate, sealAs } from '../support/awareness.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { docRef } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

const FLOOD_MS = 4_000;
/** Distinct sealed frames; the attacker sends the list over and over (later rounds are replays). */
const DISTINCT = 200;

/**
 * A live device of a user floods awareness (presence is never stored or metered, so it is the
 * obvious free channel) from its own process: ~40 KiB states padded to the 64 KiB cap, as fast
 * as TCP takes them. The relay drops what passes the per-connection rate before decoding it,
 * stops reading the socket for a second after every 256 KiB dropped in a row, forwards the rest at the
 * lowest lane, and another user's crisis edits are timed meanwhile.
 */
describe('awareness flood', () => {
  const scope = useTestScope();

  it("one device flooding awareness delays no other user's crisis edit past 200 ms and leaves no backlog in the relay", async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const b = await scope.device(relay.url, idA);
    const pB = await b.client.provider(JOURNAL);
    scope.defer(() => pB.destroy());
    await b.client.whenSynced();
    let applied = 0;
    pB.awareness.on('update', (_: unknown, origin: unknown) => {
      if (origin === RELAY_AWARENESS_ORIGIN) applied++;
    });
    const idFlood = await linkNewDevice(idA);
    const now = Date.now();
    const frames = Array.from({ length: DISTINCT }, (_, i) =>
      JSON.stringify({ type: 'awareness', aw: sealAs(idFlood, awarenessUpdate({ blob: 'x'.repeat(40 * 1024) }, 777, i + 1), now + i) }),
    );
    // The probe's devices live in this process: start timing only after the ~200 sealings above,
    // which hold this event loop for a few hundred ms on a slow machine (CI once measured that
    // stall as a 372 ms crisis edit).
    const probe = await startCrisisProbe(scope, relay.url, { intervalMs: 50, maxEdits: 10_000 });
    const sub = JSON.stringify({ type: 'sub', docs: [{ doc: docRef(idA, JOURNAL.class, JOURNAL.name).id, after: 0 }] });
    const before = memoryOf(relay.pid);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      sockets: [{ auth: serializeIdentity(idFlood), frames: [sub, ...frames], rounds: 50, hold: true }],
      durationMs: FLOOD_MS + 10_000,
    });
    // The relay pauses the flooder's socket, so its plan would outlast the flood: cut it when the time is up.
    await new Promise((resolve) => setTimeout(resolve, FLOOD_MS));
    const report = await attacker.stop();
    const after = memoryOf(relay.pid);
    const crisis = await probe.stop();
    const sentMiB = (report.sent * 88 * 1024) / 2 ** 20;
    console.log(
      `awareness flood: ${report.sent} frames (~${sentMiB.toFixed(0)} MiB) in ${FLOOD_MS / 1000} s, ${applied} applied on the user's other device; ` +
        `other user's crisis edits p50 ${crisis.p50.toFixed(1)} ms, p99 ${crisis.p99.toFixed(1)} ms, max ${crisis.max.toFixed(1)} ms over ${crisis.received}; ` +
        `relay RSS ${before.rssMiB} → ${after.rssMiB} MiB (peak ${after.peakMiB})`,
    );
    expect(report.authenticated).toBe(1);
    expect(crisis.lost).toBe(0);
    expect(crisis.received).toBeGreaterThan(20);
    expect(crisis.p99).toBeLessThan(200);
    // The user's own other device got the rate (a burst, then 30 frames and 128 KiB a second), not the flood.
    // The flooder got into its socket what TCP let it (the relay stops reading it), most of it dropped.
    expect(report.sent).toBeGreaterThan(3 * applied);
    expect(applied).toBeGreaterThan(0);
    expect(applied).toBeLessThanOrEqual(60 + Math.ceil(30 * (FLOOD_MS / 1000 + 1)));
    // Nothing of it piles up in the relay (the flood waits in TCP buffers while the relay does not read it).
    expect(after.peakMiB - before.rssMiB).toBeLessThan(64);
    expect(isAlive(relay.pid)).toBe(true);
  });
});
