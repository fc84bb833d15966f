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
});
