import { createIdentity, linkNewDevice } from '@keel/client';
import { cryptoReady } from '@keel/engine';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { waitFor } from '../support/devices.js';
import { type RawSocket, connectRawDevice, docRef, healthStatus, mapUpdate, openRawSocket, sealFor } from '../support/raw-device.js';
import { errorLinesBesidesCrisisAlerts } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();
beforeAll(async () => {
  await cryptoReady();
});

/** A frame-shaped JSON value: a known or unknown type with fields that are right, wrong or missing. */
const hostileFrame = (valid: Record<string, unknown>[]) =>
  fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.json({ maxDepth: 4 }),
    fc.record({ type: fc.constantFrom('hello', 'auth', 'sub', 'unsub', 'push', 'pair-open', 'pair-join', 'pair-grant', 'register', 'revoke', 'epoch', 'x') }).chain((base) =>
      fc.dictionary(fc.constantFrom('v', 'user', 'device', 'docs', 'envs', 'id', 'sig', 'cert', 'record', 'ttlMs', 'extra'), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 4 }).map(
        (fields) => JSON.stringify({ ...fields, ...base }),
      ),
    ),
    // A valid frame with one field replaced by something arbitrary.
    fc.tuple(fc.constantFrom(...valid), fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 2 })).map(([frame, key, value]) => {
      const keys = Object.keys(frame);
      const target = keys[key.length % keys.length]!;
      return JSON.stringify({ ...frame, [target]: value });
    }),
  );

describe('protocol fuzzing against the relay process', () => {
  it('answers arbitrary and mutated frames with valid replies, never crashing or disturbing an honest pair', async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA);
    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const spec = { class: 'safety_plan', name: 'main' } as const;
    const [docA, docB] = await Promise.all([a.client.open(spec), b.client.open(spec)]);

    const attacker = await createIdentity();
    const ref = docRef(attacker, 'checkin', 'x');
    const valid: Record<string, unknown>[] = [
      { type: 'sub', docs: [{ doc: ref.id, after: 0 }] },
      { type: 'push', envs: [sealFor(attacker, ref, 1, mapUpdate('k', 1))] },
      { type: 'pair-open', id: 'AAAAAAAAAAAAAAAA', ttlMs: 5_000 },
      { type: 'hello', v: 1, user: attacker.user.userId, device: attacker.device.deviceId },
    ];

    let socket: RawSocket | undefined;
    const sockets: RawSocket[] = [];
    const fresh = async () => {
      await socket?.close();
      // Alternately as an authenticated device and as a stranger before hello.
      socket = sockets.length % 2 === 0 ? await connectRawDevice(relay.url, attacker) : await openRawSocket(relay.url);
      const current = socket;
      sockets.push(current);
      scope.defer(() => current.close());
    };
    await fresh();
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(hostileFrame(valid), { minLength: 1, maxLength: 8 }), async (frames) => {
        for (const frame of frames) {
          if (!socket!.isOpen) await fresh();
          socket!.send(frame);
          sent++;
        }
        docA.getMap('fuzz').set(`n${sent}`, sent);
        // Let the relay answer (and close a socket past its bad-frame budget) before the next run.
        await new Promise((resolve) => setTimeout(resolve, 10));
      }),
      { seed: 20261125, numRuns: 60 },
    );
    expect(sent).toBeGreaterThan(100);
    expect(sockets.length).toBeGreaterThan(1);
    // Every reply the relay sent, on every socket, was a valid frame; errors were typed.
    expect(sockets.flatMap((s) => s.invalid)).toEqual([]);
    expect(sockets.flatMap((s) => s.received).filter((f) => f.type === 'error').length).toBeGreaterThan(50);
    expect(await healthStatus(relay.port)).toBe(200);
    await a.client.flush();
    await waitFor(() => Buffer.from(Y.encodeStateAsUpdate(docA)).equals(Buffer.from(Y.encodeStateAsUpdate(docB))), 5_000, 'honest pair converged');
    expect(errorLinesBesidesCrisisAlerts(relay.output())).toEqual([]);
    expect([...a.errors, ...b.errors]).toEqual([]);
  });
});
