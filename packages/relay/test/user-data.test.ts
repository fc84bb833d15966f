import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  certifyFirstDevice,
  cryptoReady,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  deriveUserKeys,
  generateDeviceKeys,
  generateRootKey,
  type Seq,
  sealEnvelope,
} from '@keel/engine';
import Database from 'better-sqlite3';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { writePrivateFile } from '../src/commands/private-file.js';
import { type SqliteRelayStore, openSqliteStore } from '../src/storage/sqlite-store.js';
import { UserDataError } from '../src/storage/user-data.js';
import { NON_USER_TABLES, USER_TABLES } from '../src/storage/user-tables.js';

const T0 = 1_760_000_000_000;
const dirs: string[] = [];
const stores: SqliteRelayStore[] = [];
afterEach(async () => {
  for (const store of stores.splice(0)) await store.close();
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'keel-user-data-'));
  dirs.push(dir);
  return dir;
};
const open = (path: string) => {
  const store = openSqliteStore({ path });
  stores.push(store);
  return store;
};
const mode = (path: string) => statSync(path).mode & 0o777;

/** A user with one device and one document of `n` envelopes, written through the store as the relay does. */
const seedUser = async (store: SqliteRelayStore, n = 3) => {
  const user = deriveUserKeys(generateRootKey());
  const device = generateDeviceKeys();
  const registered = await store.registerDevice(certifyFirstDevice(user, device, T0), device.publicKey, user.userPublicKey, T0, { maxLive: 32, maxTotal: 256 });
  expect(registered.ok).toBe(true);
  const doc = deriveDocId(user.docIdKey, 'mood', 'today');
  const key = deriveDocKey(deriveEpochZeroSecret(user.rootKey), doc, 0);
  const batch = Array.from({ length: n }, (_, i) => ({
    userId: user.userId,
    env: sealEnvelope({ doc, kind: 'update', epoch: 0, device: device.deviceId, counter: i + 1, lane: 5 }, new Uint8Array([i, 1, 2]), { key, signingKey: device.secretKey }),
  }));
  expect((await store.append(batch, T0)).map((o) => o.status)).toEqual(batch.map(() => 'stored'));
  await store.setEntitlement(user.userId, 'premium', T0, 'operator', { audit: [{ actor: 'operator', op: 'tier.set', userId: user.userId, outcome: 'applied', detail: { to: 'premium' } }] });
  return { user, device, doc };
};

/** The user's export archive, as the lines `importUser` takes. */
const exportLines = async (store: SqliteRelayStore, userId: string): Promise<string[]> => {
  const chunks: string[] = [];
  await store.exportUser(userId, (chunk) => chunks.push(chunk), T0);
  return chunks.join('').trimEnd().split('\n');
};

describe('the tables of a user', () => {
  it('lists every table of the schema, with exactly its columns', async () => {
    const path = join(tempDir(), 'relay.db');
    await openSqliteStore({ path }).close();
    const db = new Database(path, { readonly: true });
    try {
      const tables = db.prepare<[], { name: string }>(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`).all().map((t) => t.name);
      for (const table of tables) {
        const columns = db.prepare<[], { name: string }>(`PRAGMA table_info(${table})`).all().map((c) => c.name);
        const spec = USER_TABLES.find((t) => t.name === table);
        if (spec) {
          // A column the export does not carry would be lost by export + import.
          expect(Object.keys(spec.columns).sort(), table).toEqual(columns.sort());
        } else {
          // A table with a user's rows that delete would not reach.
          expect(NON_USER_TABLES, `${table} (columns ${columns.join(', ')}) is in neither list`).toContain(table);
        }
      }
      expect(tables.length).toBe(USER_TABLES.length + NON_USER_TABLES.length);
    } finally {
      db.close();
    }
  });
});

describe('user data operations', () => {
  beforeAll(async () => {
    await cryptoReady();
  });

  it('deletes every row of one user and no row of another', async () => {
    const path = join(tempDir(), 'relay.db');
    const store = open(path);
    const gone = await seedUser(store);
    const kept = await seedUser(store);
    const outcome = await store.deleteUser(gone.user.userId, T0 + 1);
    expect(outcome.removed).toMatchObject({ users: 1, devices: 1, docs: 1, log: 3, doc_authors: 1, entitlements: 1 });
    expect(outcome.auditErased).toBe(1);
    expect(outcome.walTruncated).toBe(true);
    expect(outcome.audit).toMatchObject({ op: 'user.delete', userId: null, outcome: 'deleted' });
    expect(await store.hasUser(gone.user.userId)).toBe(false);
    expect(await store.hasUser(kept.user.userId)).toBe(true);
    expect(await store.readLog(kept.user.userId, kept.doc, 0 as Seq, 10)).toHaveLength(3);
    expect((await store.readAudit(0, 10)).filter((r) => r.userId === kept.user.userId)).toHaveLength(1);
    // Remembered as deleted (its devices may not create it again), under its ref only.
    expect(await store.isDeletedUser(gone.user.userId)).toBe(true);
    expect(await store.isDeletedUser(kept.user.userId)).toBe(false);
    expect(outcome.audit.userRef).toMatch(/^[0-9a-f]{64}$/);
    const db = new Database(path, { readonly: true });
    try {
      expect(db.prepare('SELECT user_ref FROM deleted_users').all()).toEqual([{ user_ref: outcome.audit.userRef }]);
    } finally {
      db.close();
    }
  });

  it('lets an import bring a deleted user back', async () => {
    const dir = tempDir();
    const store = open(join(dir, 'relay.db'));
    const { user } = await seedUser(store);
    const lines = await exportLines(store, user.userId);
    await store.deleteUser(user.userId, T0 + 1);
    expect(await store.isDeletedUser(user.userId)).toBe(true);
    await store.importUser(lines, T0 + 2);
    expect(await store.hasUser(user.userId)).toBe(true);
    expect(await store.isDeletedUser(user.userId)).toBe(false);
  });

  it('refuses an import for a user the relay holds, a row of another user, an unknown table and a bad blob, leaving nothing', async () => {
    const dir = tempDir();
    const source = open(join(dir, 'source.db'));
    const { user } = await seedUser(source);
    const all = await exportLines(source, user.userId);
    await expect(source.importUser(all, T0)).rejects.toMatchObject({ code: 'USER_EXISTS' });

    const target = open(join(dir, 'target.db'));
    const withRow = (row: string) => {
      // A line inserted before the end line, and the end line recomputed, so only the row is wrong.
      const body = [...all.slice(0, -1), row];
      const hash = createHash('sha256');
      for (const line of body) hash.update(line).update('\n');
      return [...body, JSON.stringify({ end: true, lines: body.length, sha256: hash.digest('hex') })];
    };
    const other = `u_${'B'.repeat(43)}`;
    await expect(target.importUser(withRow(JSON.stringify({ table: 'usage', row: { user_id: other, day: '2026-01-01', bytes: 1 } })), T0)).rejects.toThrow(/another user/);
    await expect(target.importUser(withRow(JSON.stringify({ table: 'meta', row: { key: 'relay_id', value: 'x' } })), T0)).rejects.toThrow(/no table "meta"/);
    const device = JSON.parse(all.find((l) => l.includes('"table":"devices"'))!) as { row: Record<string, unknown> };
    await expect(
      target.importUser(withRow(JSON.stringify({ table: 'vouches', row: { device_id: device.row.device_id, issuer: device.row.device_id, user_id: user.userId, issued_at: 1, sig: '%%%', created_at: 1 } })), T0),
    ).rejects.toThrow(/base64/);
    await expect(target.importUser(all.slice(0, -1), T0)).rejects.toBeInstanceOf(UserDataError);
    expect(await target.hasUser(user.userId)).toBe(false);
    expect(await target.readAudit(0, 10)).toEqual([]);

    const imported = await target.importUser(all, T0);
    expect(imported.rows).toMatchObject({ users: 1, devices: 1, log: 3 });
    expect(await target.hasUser(user.userId)).toBe(true);
  });
});

describe('file modes', () => {
  it('creates the database, its WAL and shared memory 0600 whatever the umask, and narrows an existing file', async () => {
    const old = process.umask(0);
    try {
      const path = join(tempDir(), 'relay.db');
      const store = open(path);
      await seedUser(store);
      for (const file of [path, `${path}-wal`, `${path}-shm`]) {
        expect(existsSync(file), file).toBe(true);
        expect(mode(file), file).toBe(0o600);
      }
      const loose = join(tempDir(), 'loose.db');
      writeFileSync(loose, '');
      chmodSync(loose, 0o644);
      open(loose);
      expect(mode(loose)).toBe(0o600);

      const backup = join(tempDir(), 'backup.db');
      await store.backup(backup);
      expect(mode(backup)).toBe(0o600);
      await expect(store.backup(backup)).rejects.toMatchObject({ code: 'EEXIST' });

      const out = join(tempDir(), 'export.jsonl');
      await writePrivateFile(out, async (write) => write('x\n'));
      expect(mode(out)).toBe(0o600);
      expect(readFileSync(out, 'utf8')).toBe('x\n');
    } finally {
      process.umask(old);
    }
  });
});
