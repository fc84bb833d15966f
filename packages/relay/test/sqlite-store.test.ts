import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
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
import Database from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
import { openSqliteStore } from '../src/storage/sqlite-store.js';
import { runRelayStoreConformance } from './store-conformance.js';

const tempDir = () => mkdtemp(join(tmpdir(), 'keel-relay-store-'));

runRelayStoreConformance('sqlite (file, WAL)', async () => {
  const dir = await tempDir();
  const path = join(dir, 'relay.db');
  return {
    store: openSqliteStore({ path }),
    reopen: async () => openSqliteStore({ path }),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
});

describe('sqlite relay store on disk', () => {
  beforeAll(async () => {
    await cryptoReady();
  });

  it('writes no sealed plaintext to the database file or its WAL', async () => {
    const dir = await tempDir();
    const path = join(dir, 'relay.db');
    const store = openSqliteStore({ path });
    try {
      const user = deriveUserKeys(generateRootKey());
      const device = generateDeviceKeys();
      const registered = await store.registerDevice(certifyFirstDevice(user, device, 1), device.publicKey, user.userPublicKey, 1);
      expect(registered.ok).toBe(true);
      const doc = deriveDocId(user.docIdKey, 'mood', 'today');
      const key = deriveDocKey(deriveEpochZeroSecret(user.rootKey), doc, 0);
      const marker = `KEEL-PLAINTEXT-MARKER-${Buffer.from(generateRootKey()).toString('hex')}`;
      // Unpadded, so a store that kept plaintext would hold the marker bytes verbatim.
      const envs = [1, 2, 3].map((counter) =>
        sealEnvelope(
          { doc, kind: 'update', epoch: 0, device: device.deviceId, counter, lane: 5 },
          new TextEncoder().encode(`${marker} entry ${counter}`),
          { key, signingKey: device.secretKey },
        ),
      );
      const outcomes = await store.append(
        envs.map((env) => ({ userId: user.userId, env })),
        2,
      );
      expect(outcomes.map((o) => o.status)).toEqual(['stored', 'stored', 'stored']);

      const onDisk = async (): Promise<Buffer> =>
        Buffer.concat(await Promise.all([path, `${path}-wal`].filter((p) => existsSync(p)).map((p) => readFile(p))));

      // While open, the commits live in the WAL; the scan must see them there.
      expect(existsSync(`${path}-wal`)).toBe(true);
      const whileOpen = await onDisk();
      for (const env of envs) expect(whileOpen.indexOf(Buffer.from(fromB64(env.ct)))).toBeGreaterThanOrEqual(0);
      expect(whileOpen.indexOf(marker)).toBe(-1);

      // After close the WAL is checkpointed into the main file.
      await store.close();
      const afterClose = await onDisk();
      expect(afterClose.indexOf(Buffer.from(fromB64(envs[0]!.ct)))).toBeGreaterThanOrEqual(0);
      expect(afterClose.indexOf(marker)).toBe(-1);
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses to update or delete audit rows (append-only), and a read-only open writes nothing', async () => {
    const dir = await tempDir();
    const path = join(dir, 'relay.db');
    const store = openSqliteStore({ path });
    try {
      await store.appendAudit([{ actor: 'operator', op: 'tier.set', userId: null, outcome: 'applied', detail: { to: 'premium' } }], 1);
      await store.close();

      const raw = new Database(path);
      try {
        expect(() => raw.prepare(`UPDATE audit SET outcome = 'forged'`).run()).toThrow(/append-only/);
        expect(() => raw.prepare(`DELETE FROM audit`).run()).toThrow(/append-only/);
      } finally {
        raw.close();
      }

      const reader = openSqliteStore({ path, readonly: true });
      try {
        expect((await reader.readAudit(0, 10)).map((r) => r.outcome)).toEqual(['applied']);
        await expect(reader.appendAudit([{ actor: 'x', op: 'y', userId: null, outcome: 'z', detail: {} }], 2)).rejects.toThrow(/readonly/);
      } finally {
        await reader.close();
      }
      expect(() => openSqliteStore({ path: join(dir, 'missing.db'), readonly: true })).toThrow();
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
