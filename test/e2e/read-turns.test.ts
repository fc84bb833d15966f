import { mkdtempSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createIdentity } from '@keel/client';
import { RelayConfigSchema, openSqliteStore, silentLogger, startRelay } from '@keel/relay';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { connectRawDevice, docRef } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/**
 * What one socket can make the relay do in one turn of its event loop. libuv reads a ready
 * socket up to 32 times per turn, so a device that writes a burst of frames at once hands the
 * relay megabytes in one go; read frame after frame, 180 subscription frames from five sockets
 * held the loop for 110 ms (test/attacks/connections.test.ts). The relay reads one frame per
 * socket per turn; the rest waits in the socket's buffers.
 */
describe('reading a burst of frames', () => {
  const scope = useTestScope();

  it('frames a device writes in one burst are read one per event-loop turn, all of them, in order', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keel-read-turns-'));
    scope.defer(() => rmSync(dir, { recursive: true, force: true }));
    const config = RelayConfigSchema.parse({ port: 0, host: '127.0.0.1', db: join(dir, 'relay.db'), defaultTier: 'premium' });
    const relay = await startRelay({ config, store: openSqliteStore({ path: config.db }), log: silentLogger });
    scope.defer(() => relay.close());

    const user = await createIdentity();
    const raw = await connectRawDevice(relay.url, user);
    scope.defer(() => raw.close());
    const doc = docRef(user, 'safety_plan', 'main').id;

    // The relay runs in this process: count the turns of its event loop while the burst is read.
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
    const read: { seq: number; turn: number }[] = [];
    const stop = relay.events.on('receipt', ({ seqs }) => read.push({ seq: seqs[0]!, turn }));
    scope.defer(stop);

    // 64 frames in one write: the relay has them all in one read of the socket.
    const socket = (raw.ws as unknown as { _socket: Socket })._socket;
    socket.cork();
    for (let seq = 1; seq <= 64; seq++) raw.sendFrame({ type: 'receipt', doc, seqs: [seq] });
    socket.uncork();
    await waitFor(() => read.length === 64, 5_000, 'every frame of the burst read');

    expect(read.map((r) => r.seq)).toEqual(Array.from({ length: 64 }, (_, i) => i + 1));
    const perTurn = new Map<number, number>();
    for (const r of read) perTurn.set(r.turn, (perTurn.get(r.turn) ?? 0) + 1);
    expect(Math.max(...perTurn.values())).toBe(1);
    expect(raw.isOpen).toBe(true);
  });
});
