import type { Socket } from 'node:net';
import { createIdentity } from '@keel/client';
import { READ_BYTES_PER_TURN } from '@keel/relay';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { connectRawDevice, docRef } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/**
 * What one socket can make the relay do in one turn of its event loop. libuv reads a ready
 * socket up to 32 times per turn, so a device that writes a burst of frames at once hands the
 * relay megabytes in one go; read frame after frame, 180 subscription frames from five sockets
 * held the loop for 110 ms (test/attacks/connections.test.ts). The relay reads up to 64 KiB of
 * frames per socket per turn (server/read-turns.ts); the rest waits in the socket's buffers.
 */
describe('reading a burst of frames', () => {
  const scope = useTestScope();

  it('frames a device writes in one burst are read 64 KiB per event-loop turn, all of them, in order', async () => {
    // In this process: the test counts the turns of the relay's own event loop.
    const relay = await scope.inProcessRelay();
    const user = await createIdentity();
    const raw = await connectRawDevice(relay.url, user);
    scope.defer(() => raw.close());
    const doc = docRef(user, 'safety_plan', 'main').id;

    // Count the turns of the event loop while the burst is read.
    let turn = 0;
    let ticking = true;
    const tick = (): void => {
      turn++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    scope.defer(() => {
      ticking = false;
    });
    const read: { first: number; turn: number }[] = [];
    const stop = relay.events.on('receipt', ({ seqs }) => read.push({ first: seqs[0]!, turn }));
    scope.defer(stop);

    // 64 receipts of 512 seqs (~4.6 KiB each, ~300 KiB in all) in one write: the relay has them
    // all at once in its reads of the socket.
    const frames = Array.from({ length: 64 }, (_, f) =>
      JSON.stringify({ type: 'receipt', doc, seqs: Array.from({ length: 512 }, (_, i) => 1_000_000 + f * 512 + i) }),
    );
    const socket = (raw.ws as unknown as { _socket: Socket })._socket;
    socket.cork();
    for (const f of frames) raw.send(f);
    socket.uncork();
    await waitFor(() => read.length === frames.length, 5_000, 'every frame of the burst read');

    expect(read.map((r) => r.first)).toEqual(frames.map((_, f) => 1_000_000 + f * 512));
    const bytesPerTurn = new Map<number, number[]>();
    read.forEach((r, f) => bytesPerTurn.set(r.turn, [...(bytesPerTurn.get(r.turn) ?? []), Buffer.byteLength(frames[f]!)]));
    // Each turn reads while under its budget: all but its last frame add up to less than it.
    for (const lengths of bytesPerTurn.values()) expect(lengths.slice(0, -1).reduce((n, l) => n + l, 0)).toBeLessThan(READ_BYTES_PER_TURN);
    expect(bytesPerTurn.size).toBeGreaterThanOrEqual(4);
    expect(raw.isOpen).toBe(true);
  });
});
