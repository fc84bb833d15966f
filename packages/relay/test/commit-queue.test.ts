import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type DeviceKeys,
  type UserKeys,
  certifyFirstDevice,
  cryptoReady,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  deriveUserKeys,
  fromB64,
  generateDeviceKeys,
  generateRootKey,
  sealEnvelope,
} from '@keel/engine';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCommitQueue } from '../src/server/commit-queue.js';
import type { RelayStore } from '../src/storage/relay-store.js';
import { openSqliteStore } from '../src/storage/sqlite-store.js';

let user: UserKeys;
let device: DeviceKeys;
let dir: string;
let store: RelayStore;

beforeAll(async () => {
  await cryptoReady();
});

afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

const setup = async () => {
  dir = mkdtempSync(join(tmpdir(), 'keel-commit-'));
  store = openSqliteStore({ path: join(dir, 'relay.db') });
  user = deriveUserKeys(generateRootKey());
  device = generateDeviceKeys();
  const cert = certifyFirstDevice(user, device, 1);
  const registered = await store.registerDevice(cert, device.publicKey, fromB64(cert.userKey), 1, { maxLive: 32, maxTotal: 256 });
  expect(registered.ok).toBe(true);
};

const envelope = (name: string, counter: number, lane: number) => {
  const doc = deriveDocId(user.docIdKey, 'checkin', name);
  const key = deriveDocKey(deriveEpochZeroSecret(user.rootKey), doc, 0);
  return sealEnvelope({ doc, kind: 'update', epoch: 0, device: device.deviceId, counter, lane }, new Uint8Array([counter]), {
    key,
    signingKey: device.secretKey,
  });
};

describe('commit queue', () => {
  it('commits bulk batches of one turn together, in submission order', async () => {
    await setup();
    const queue = createCommitQueue(store, () => 1);
    const results = await Promise.all([1, 2, 3].map((c) => queue.submit([{ userId: user.userId, env: envelope('a', c, 4) }])));
    expect(results.map((r) => r[0])).toEqual([
      { status: 'stored', seq: 1 },
      { status: 'stored', seq: 2 },
      { status: 'stored', seq: 3 },
    ]);
  });

  it('commits an urgent batch before the end of the turn, carrying earlier bulk with it in order', async () => {
    await setup();
    const queue = createCommitQueue(store, () => 1);
    const order: string[] = [];
    const bulk = queue.submit([{ userId: user.userId, env: envelope('doc', 1, 4) }]).then((r) => {
      order.push('bulk');
      return r;
    });
    const urgent = queue.submit([{ userId: user.userId, env: envelope('doc', 2, 10) }], true).then((r) => {
      order.push('urgent');
      return r;
    });
    let immediateRan = false;
    setImmediate(() => (immediateRan = true));
    const [b, u] = await Promise.all([bulk, urgent]);
    // Both committed in one urgent flush before the turn ended; the counter order held.
    expect(immediateRan).toBe(false);
    expect(b[0]).toEqual({ status: 'stored', seq: 1 });
    expect(u[0]).toEqual({ status: 'stored', seq: 2 });
    expect(order).toEqual(['bulk', 'urgent']);
    await queue.idle();
  });

  it("moves an urgent batch ahead of other users' bulk, never ahead of its own user's", async () => {
    await setup();
    const other = deriveUserKeys(generateRootKey());
    const otherDevice = generateDeviceKeys();
    expect((await store.registerDevice(certifyFirstDevice(other, otherDevice, 1), otherDevice.publicKey, other.userPublicKey, 1, { maxLive: 32, maxTotal: 256 })).ok).toBe(true);
    const otherEnvelope = (counter: number, lane: number) => {
      const doc = deriveDocId(other.docIdKey, 'checkin', 'b');
      return sealEnvelope({ doc, kind: 'update', epoch: 0, device: otherDevice.deviceId, counter, lane }, new Uint8Array([counter]), {
        key: deriveDocKey(deriveEpochZeroSecret(other.rootKey), doc, 0),
        signingKey: otherDevice.secretKey,
      });
    };
    const queue = createCommitQueue(store, () => 1);
    const order: string[] = [];
    const track = (name: string, p: Promise<unknown>) => p.then(() => order.push(name));
    const done = [
      track('a1', queue.submit([{ userId: user.userId, env: envelope('doc', 1, 4) }])),
      track('b1', queue.submit([{ userId: other.userId, env: otherEnvelope(1, 4) }])),
      track('a2', queue.submit([{ userId: user.userId, env: envelope('doc', 2, 4) }])),
      // Other's crisis edit overtakes A's bulk but not its own earlier b1; A's crisis stays behind a2.
      track('b2-urgent', queue.submit([{ userId: other.userId, env: otherEnvelope(2, 10) }], true)),
      track('a3-urgent', queue.submit([{ userId: user.userId, env: envelope('doc', 3, 10) }], true)),
    ];
    const results = await Promise.all(done);
    expect(results).toHaveLength(5);
    expect(order.indexOf('b1')).toBeLessThan(order.indexOf('b2-urgent'));
    expect(order.indexOf('b2-urgent')).toBeLessThan(order.indexOf('a2'));
    expect(order.indexOf('a2')).toBeLessThan(order.indexOf('a3-urgent'));
    expect((await store.readLog(user.userId, deriveDocId(user.docIdKey, 'checkin', 'doc'), 0 as never, 10)).map((e) => e.env.counter)).toEqual([1, 2, 3]);
    await queue.idle();
  });

  it('writes at most 4 MiB of ciphertext per transaction, one bulk transaction per turn', async () => {
    await setup();
    const queue = createCommitQueue(store, () => 1);
    const doc = deriveDocId(user.docIdKey, 'checkin', 'big');
    const key = deriveDocKey(deriveEpochZeroSecret(user.rootKey), doc, 0);
    const big = (counter: number) =>
      sealEnvelope({ doc, kind: 'update', epoch: 0, device: device.deviceId, counter, lane: 3 }, new Uint8Array(1024 * 1024), { key, signingKey: device.secretKey });
    let turns = 0;
    let counting = true;
    const countTurns = () => {
      if (!counting) return;
      turns++;
      setImmediate(countTurns);
    };
    setImmediate(countTurns);
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => queue.submit([{ userId: user.userId, env: big(i + 1) }])));
    counting = false;
    expect(results.map((r) => r[0]!.status)).toEqual(Array.from({ length: 12 }, () => 'stored'));
    // 12 MiB of base64 (16 MiB of characters) needs at least 4 transactions, each in its own turn.
    expect(turns).toBeGreaterThanOrEqual(4);
    await queue.idle();
  });
});
