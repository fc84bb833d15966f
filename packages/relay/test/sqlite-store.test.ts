import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  certifyDevice,
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
  signRevocation,
  toB64,
} from '@keel/engine';
import Database from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
import { MIGRATIONS, openSqliteStore } from '../src/storage/sqlite-store.js';
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


/** A database file as the relay left it after its first `version` migrations (an older release). */
const databaseAt = (path: string, version: number): Database.Database => {
  const old = new Database(path);
  old.exec(`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
  for (const migration of MIGRATIONS.slice(0, version)) old.exec(migration);
  old.prepare(`INSERT INTO meta (key, value) VALUES ('schema_version', ?)`).run(String(version));
  return old;
};
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
      const registered = await store.registerDevice(certifyFirstDevice(user, device, 1), device.publicKey, user.userPublicKey, 1, { maxLive: 32, maxTotal: 256 });
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

  it('migrates a database from before revocation records: devices revoked then have none, revocations after are kept', async () => {
    const dir = await tempDir();
    const path = join(dir, 'relay.db');
    try {
      // The schema before revocation records (migrations 1–9): a user with one revoked device and one live.
      const records = MIGRATIONS.findIndex((m) => m.includes('CREATE TABLE revocations'));
      expect(records).toBe(9);
      const old = databaseAt(path, records);
      const user = deriveUserKeys(generateRootKey());
      const [phone, gone, laptop] = [generateDeviceKeys(), generateDeviceKeys(), generateDeviceKeys()];
      old.prepare(`INSERT INTO users (user_id, user_key, created_at) VALUES (?, ?, 1)`).run(user.userId, Buffer.from(user.userPublicKey));
      const insert = old.prepare(`INSERT INTO devices VALUES (?, ?, ?, ?, 1, ?, 1, ?)`);
      insert.run(phone.deviceId, user.userId, Buffer.from(phone.publicKey), null, Buffer.from(fromB64(certifyFirstDevice(user, phone, 1).sig)), null);
      for (const [device, revokedAt] of [[gone, 5], [laptop, null]] as const) {
        insert.run(device.deviceId, user.userId, Buffer.from(device.publicKey), phone.deviceId, Buffer.from(fromB64(certifyDevice(user, phone, device.publicKey, 1).sig)), revokedAt);
      }
      old.close();

      const store = openSqliteStore({ path });
      try {
        expect((await store.getDevice(gone.deviceId))?.revokedAt).toBe(5);
        expect(await store.revocationRecords(gone.deviceId)).toEqual({});
        expect(await store.listRevocations(user.userId, 10)).toEqual([]);
        const revocation = signRevocation(user.userId, laptop.deviceId, phone, 10);
        expect((await store.revokeDevice(revocation, 10)).ok).toBe(true);
        expect(await store.revocationRecords(laptop.deviceId)).toEqual({ revocation });
        expect(await store.listRevocations(user.userId, 10)).toEqual([revocation]);
      } finally {
        await store.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('moves a database written before per-user namespaces into them, keeping every entry, counter and snapshot', async () => {
    const dir = await tempDir();
    const path = join(dir, 'relay.db');
    try {
      // The schema as it was before namespaces (migrations 1–5), with one user's data in it.
      const namespaces = MIGRATIONS.findIndex((m) => m.includes('docs_v2'));
      expect(namespaces).toBeGreaterThan(0);
      const old = databaseAt(path, namespaces);
      const user = deriveUserKeys(generateRootKey());
      const device = generateDeviceKeys();
      const doc = deriveDocId(user.docIdKey, 'mood', 'today');
      const key = deriveDocKey(deriveEpochZeroSecret(user.rootKey), doc, 0);
      const envs = [1, 2].map((counter) =>
        sealEnvelope({ doc, kind: 'update', epoch: 0, device: device.deviceId, counter, lane: 5 }, new Uint8Array([counter]), { key, signingKey: device.secretKey }),
      );
      const cert = certifyFirstDevice(user, device, 1);
      old.prepare(`INSERT INTO users VALUES (?, ?, 1)`).run(user.userId, Buffer.from(user.userPublicKey));
      old.prepare(`INSERT INTO devices VALUES (?, ?, ?, NULL, 1, ?, 1, NULL)`).run(device.deviceId, user.userId, Buffer.from(device.publicKey), Buffer.from(fromB64(cert.sig)));
      old.prepare(`INSERT INTO docs VALUES (?, ?, 2, 1)`).run(doc, user.userId);
      old.prepare(`INSERT INTO doc_authors VALUES (?, ?, 2)`).run(doc, device.deviceId);
      envs.forEach((env, i) =>
        old
          .prepare(`INSERT INTO log VALUES (?, ?, ?, ?, 'update', 0, 5, ?, ?, ?, ?)`)
          .run(doc, i + 1, device.deviceId, env.counter, Buffer.from(fromB64(env.nonce)), Buffer.from(fromB64(env.ct)), Buffer.from(fromB64(env.sig)), 10 + i),
      );
      old.prepare(`INSERT INTO snapshots VALUES (?, 1, ?, 1, 0, 5, ?, ?, ?, 20)`).run(doc, device.deviceId, Buffer.from(fromB64(envs[0]!.nonce)), Buffer.from(fromB64(envs[0]!.ct)), Buffer.from(fromB64(envs[0]!.sig)));
      old.close();

      const store = openSqliteStore({ path });
      try {
        expect(await store.headSeq(user.userId, doc)).toBe(2);
        expect((await store.readLog(user.userId, doc, 0 as never, 10)).map((e) => e.env)).toEqual(envs);
        expect(await store.lastCounter(user.userId, doc, device.deviceId)).toBe(2);
        expect(await store.snapshotBase(user.userId, doc)).toBe(1);
        expect((await store.getSnapshot(user.userId, doc))?.env.ct).toBe(toB64(fromB64(envs[0]!.ct)));
        // Counters carried over: a replay is a duplicate, the next counter is seq 3.
        const next = sealEnvelope({ doc, kind: 'update', epoch: 0, device: device.deviceId, counter: 3, lane: 5 }, new Uint8Array([3]), { key, signingKey: device.secretKey });
        const outcomes = await store.append([{ userId: user.userId, env: envs[1]! }, { userId: user.userId, env: next }], 30);
        expect(outcomes).toEqual([{ status: 'duplicate', seq: 2 }, { status: 'stored', seq: 3 }]);
      } finally {
        await store.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
