import type { Socket } from 'node:net';
import { createIdentity } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { connectRawDevice, docRef, mapUpdate, sealFor } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/**
 * Pushes of one connection are admitted in the order they arrived. A crisis push may take the
 * relay's immediate path; one that arrives while an earlier push of the same connection is
 * still being admitted must wait for it, or its counter overtakes the earlier ones and is
 * refused as a gap (seen when a device refilled counters and resealed right behind them).
 */

const scope = useTestScope();

describe('push order on one connection', () => {
  it('back-to-back crisis pushes (counters 1–3, then 4, then 5–6) are all stored, in order, without a gap', async () => {
    const relay = await scope.relay();
    const identity = await createIdentity();
    const raw = await connectRawDevice(relay.url, identity);
    scope.defer(() => raw.close());
    const plan = docRef(identity, 'safety_plan', 'main');
    const env = (n: number) => sealFor(identity, plan, n, mapUpdate(`k${n}`, n));
    for (let round = 0; round < 5; round++) {
      const base = round * 6;
      // One TCP write: the relay's WebSocket parser hands it all three frames in one turn.
      const tcp = (raw.ws as unknown as { _socket: Socket })._socket;
      tcp.cork();
      raw.sendFrame({ type: 'push', envs: [env(base + 1), env(base + 2), env(base + 3)] });
      raw.sendFrame({ type: 'push', envs: [env(base + 4)] });
      raw.sendFrame({ type: 'push', envs: [env(base + 5), env(base + 6)] });
      tcp.uncork();
      const acked: number[] = [];
      while (acked.length < 6) {
        const frame = await raw.next((f) => f.type === 'ack' || f.type === 'reject');
        expect(frame.type, JSON.stringify(frame)).toBe('ack');
        if (frame.type === 'ack') acked.push(...frame.acks.map((a) => a.counter));
      }
      expect(acked).toEqual([1, 2, 3, 4, 5, 6].map((n) => base + n));
    }
  });
});
