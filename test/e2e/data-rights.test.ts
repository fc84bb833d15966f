import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createIdentity, linkNewDevice } from '@keel/client';
import { ErrorCode } from '@keel/engine';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { waitFor } from '../support/devices.js';
import { runRelayCli } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

/** The database, its WAL and shared-memory index, each as SQLite left it (absent files skipped). */
const databaseFiles = (dbPath: string) =>
  [dbPath, `${dbPath}-wal`, `${dbPath}-shm`].filter(existsSync).map((path) => ({ path, bytes: readFileSync(path) }));

/** Which of `needles` (text ids, or raw key bytes) occur anywhere in the files. */
const found = (dbPath: string, needles: readonly (string | Uint8Array)[]): string[] => {
  const hits: string[] = [];
  for (const { path, bytes } of databaseFiles(dbPath)) {
    for (const needle of needles) {
      const asBytes = typeof needle === 'string' ? Buffer.from(needle, 'utf8') : Buffer.from(needle);
      if (bytes.includes(asBytes)) hits.push(`${typeof needle === 'string' ? needle : `<${asBytes.length} key bytes>`} in ${path.split('/').pop()}`);
    }
  }
  return hits;
};

const DOCS = [
  { class: 'safety_plan', name: 'plan' },
  { class: 'crisis_contacts', name: 'contacts' },
  { class: 'mood', name: 'today' },
  { class: 'history', name: 'archive' },
  { class: 'misc', name: 'notes' },
] as const;

/** What a device shows of a document: every shared type the test writes, as JSON. */
const contentOf = (doc: Y.Doc) => ({
  text: doc.getText('t').toString(),
  list: doc.getArray('l').toJSON(),
  // Key order of a Y.Map's JSON is the order its keys arrived in, which differs between devices.
  map: Object.fromEntries(Object.entries(doc.getMap('m').toJSON()).sort(([x], [y]) => x.localeCompare(y))),
});

describe('user export, delete and import', () => {
  it('exports a user, deletes every trace of them, and restores them into a fresh relay byte for byte', async () => {
    const relay = await scope.relay();
    const identity = await createIdentity();
    const second = await linkNewDevice(identity);
    // Snapshots after 4 entries: the snapshots table holds rows of this user too.
    const a = await scope.device(relay.url, identity, undefined, { snapshotEvery: 4 });
    const b = await scope.device(relay.url, second, undefined, { snapshotEvery: 4 });

    // Both devices write; crisis documents one change at a time, bulk ones in large pieces.
    const expected = new Map<string, ReturnType<typeof contentOf>>();
    const vectors = new Map<string, Uint8Array>();
    for (const [i, spec] of DOCS.entries()) {
      const docA = await a.client.open(spec);
      const docB = await b.client.open(spec);
      for (let n = 0; n < 6; n++) {
        const writer = n % 2 === 0 ? docA : docB;
        writer.getText('t').insert(0, `${spec.class}-${n} `);
        writer.getArray('l').push([n, `${spec.name}-${n}`]);
        writer.getMap('m').set(`k${n}`, { from: n % 2 === 0 ? 'a' : 'b', i });
        if (spec.class === 'history') writer.getText('t').insert(0, `${'bulk '.repeat(20_000)}${n}`);
        await (n % 2 === 0 ? a : b).client.flush();
      }
      await waitFor(() => JSON.stringify(contentOf(docA)) === JSON.stringify(contentOf(docB)), 20_000, `${spec.class} to converge`);
      expected.set(spec.class, contentOf(docA));
      vectors.set(spec.class, Y.encodeStateVector(docA));
    }
    await a.client.flush();
    await b.client.flush();

    // Tier history: two operator changes, each an entitlement write and an audit row naming the user.
    for (const tier of ['basic', 'premium']) {
      const set = await runRelayCli(['tier', 'set', identity.user.userId, tier, '--url', relay.httpUrl], { KEEL_RELAY_ADMIN_TOKEN: relay.adminToken });
      expect(set.code, set.stderr).toBe(0);
    }

    // What the relay keeps of this user, as stored: its id, device ids, document ids and public keys.
    const userId = identity.user.userId;
    const live = new Database(relay.dbPath, { readonly: true });
    const deviceIds = live.prepare<[string], { device_id: string }>(`SELECT device_id FROM devices WHERE user_id = ?`).all(userId).map((r) => r.device_id);
    const docIds = live.prepare<[string], { doc_id: string }>(`SELECT doc_id FROM docs WHERE user_id = ?`).all(userId).map((r) => r.doc_id);
    const snapshots = live.prepare<[string], { n: number }>(`SELECT count(*) AS n FROM snapshots WHERE user_id = ?`).get(userId)!.n;
    // The sync audit trail (observe/sync-audit.ts) holds rows of this user: its commits and logins.
    const syncRows = live.prepare<[string], { n: number }>(`SELECT count(*) AS n FROM audit WHERE user_id = ? AND op IN ('sync.commit', 'auth.login')`).get(userId)!.n;
    live.close();
    expect(deviceIds.sort()).toEqual([identity.device.deviceId, second.device.deviceId].sort());
    expect(docIds).toHaveLength(DOCS.length);
    expect(snapshots).toBeGreaterThan(0);
    expect(syncRows).toBeGreaterThan(DOCS.length);
    const needles: (string | Uint8Array)[] = [userId, ...deviceIds, ...docIds, identity.user.userPublicKey, identity.device.publicKey, second.device.publicKey];

    // Export while the relay serves: a private file, one consistent snapshot.
    const archive = join(relay.dir, 'user.keel-export.jsonl');
    const exported = await runRelayCli(['user', 'export', userId, '--out', archive, '--db', relay.dbPath]);
    expect(exported.stderr).toBe('');
    expect(exported.code).toBe(0);
    expect(statSync(archive).mode & 0o777).toBe(0o600);
    const header = JSON.parse(readFileSync(archive, 'utf8').split('\n')[0]!) as { format: string; version: number; user: string };
    expect(header).toMatchObject({ format: 'keel-user-export', version: 1, user: userId });
    const archiveLines = readFileSync(archive, 'utf8').trimEnd().split('\n');
    expect(archiveLines.filter((l) => l.startsWith('{"table":"entitlements"'))).toHaveLength(1);
    expect(archiveLines.filter((l) => l.startsWith('{"audit"') && l.includes('"op":"tier.set"'))).toHaveLength(2);
    expect(archiveLines.at(-1)).toMatch(/^\{"end":true,"lines":\d+,"sha256":"[0-9a-f]{64}"\}$/);

    // Delete refuses while the relay holds the file.
    const refused = await runRelayCli(['user', 'delete', userId, '--db', relay.dbPath]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('stop it first');

    // Devices off; relay killed without a checkpoint, so the WAL still holds the user's pages.
    await a.client.close();
    await b.client.close();
    await relay.kill9();
    expect(found(relay.dbPath, needles).length, 'the scan finds the ids before the deletion').toBeGreaterThan(0);

    const deleted = await runRelayCli(['user', 'delete', userId, '--db', relay.dbPath]);
    expect(deleted.stderr).toBe('');
    expect(deleted.code).toBe(0);
    expect(deleted.stdout).toMatch(/deleted the user \(.*log \d+.*\)/);
    // Straight after the command, before anything else checkpoints: database, WAL, shared memory.
    expect(found(relay.dbPath, needles)).toEqual([]);
    // After a checkpoint by another connection, and with the WAL that connection leaves.
    const after = new Database(relay.dbPath);
    after.pragma('wal_checkpoint(TRUNCATE)');
    const audit = after.prepare<[], { op: string; user_id: string | null; user_ref: string | null }>(`SELECT op, user_id, user_ref FROM audit ORDER BY seq`).all();
    const remaining = after.prepare<[], { n: number }>(`SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM devices) + (SELECT count(*) FROM log) AS n`).get()!.n;
    expect(found(relay.dbPath, needles)).toEqual([]);
    after.close();
    expect(found(relay.dbPath, needles)).toEqual([]);
    expect(remaining).toBe(0);
    // Export and delete are audited; no row names the user, the deletion row carries its keyed ref.
    expect(audit.map((r) => r.op)).toEqual(expect.arrayContaining(['tier.set', 'user.export', 'user.delete']));
    expect(audit.every((r) => r.user_id === null)).toBe(true);
    const deletion = audit.find((r) => r.op === 'user.delete')!;
    expect(deletion.user_ref).toMatch(/^[0-9a-f]{64}$/);
    // The sync rows stay (the chain needs them) under the keyed ref only; their device and document
    // ids were keyed refs from the start, so the byte scans above find none of them either.
    const syncAfter = audit.filter((r) => r.op === 'sync.commit' || r.op === 'auth.login');
    expect(syncAfter.length).toBeGreaterThanOrEqual(syncRows);
    expect(syncAfter.every((r) => r.user_ref === deletion.user_ref)).toBe(true);
    expect(audit.filter((r) => r.op === 'tier.set' || r.op === 'user.export').map((r) => r.user_ref)).toEqual([deletion.user_ref, deletion.user_ref, deletion.user_ref]);
    const verifyOld = await runRelayCli(['audit', 'verify', '--db', relay.dbPath]);
    expect(verifyOld.stdout).toContain('audit trail OK');
    expect(verifyOld.code).toBe(0);

    // The deletion sticks: the user's devices still hold their certificates, and one that comes
    // back is refused for good (ACCOUNT_DELETED) instead of creating the user again.
    const reopened = await scope.relay({ dir: relay.dir });
    const back = await scope.device(reopened.url, identity, a.store);
    await waitFor(() => back.errors.some((e) => e.final), 10_000, 'a final refusal');
    expect(back.errors.filter((e) => e.final).map((e) => e.code)).toEqual([ErrorCode.ACCOUNT_DELETED]);
    expect(back.client.status).toBe('offline');
    await reopened.stop();
    const afterReturn = new Database(relay.dbPath, { readonly: true });
    expect(afterReturn.prepare<[], { n: number }>(`SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM devices) AS n`).get()!.n).toBe(0);
    afterReturn.close();
    expect(found(relay.dbPath, needles)).toEqual([]);

    // Import into a fresh database, then a relay on it, then a device with the user's keys.
    const fresh = await scope.relay();
    await fresh.stop();
    const target = join(fresh.dir, 'restored.db');
    const imported = await runRelayCli(['user', 'import', '--in', archive, '--db', target]);
    expect(imported.stderr).toBe('');
    expect(imported.code).toBe(0);
    expect(statSync(target).mode & 0o777).toBe(0o600);
    const restored = await scope.relay({ dir: fresh.dir, args: ['--db', target] });
    const third = await scope.device(restored.url, await linkNewDevice(identity));
    for (const spec of DOCS) {
      const doc = await third.client.open(spec);
      const want = JSON.stringify(expected.get(spec.class));
      await waitFor(() => JSON.stringify(contentOf(doc)) === want, 10_000, `${spec.class} from the restored relay`);
      expect(contentOf(doc)).toEqual(expected.get(spec.class));
      // Every update of both writers, none missing or extra: the same state vector.
      expect(Buffer.from(Y.encodeStateVector(doc)).equals(Buffer.from(vectors.get(spec.class)!))).toBe(true);
    }
    expect(third.errors.filter((e) => e.final)).toEqual([]);
    // The tier came along: the operator's last change (not merely the relay's default tier).
    const restoredDb = new Database(target, { readonly: true });
    const entitlement = restoredDb.prepare<[string], { tier: string; source: string }>(`SELECT tier, source FROM entitlements WHERE user_id = ?`).get(userId);
    restoredDb.close();
    expect(entitlement).toEqual({ tier: 'premium', source: 'operator' });
    const verifyNew = await runRelayCli(['audit', 'verify', '--db', target]);
    expect(verifyNew.stdout).toContain('audit trail OK');
    expect(verifyNew.code).toBe(0);

    // The archive is refused whole when cut short or edited.
    const cut = join(fresh.dir, 'cut.jsonl');
    const lines = readFileSync(archive, 'utf8').trimEnd().split('\n');
    writeFileSync(cut, `${lines.slice(0, -2).join('\n')}\n`);
    const refusedCut = await runRelayCli(['user', 'import', '--in', cut, '--db', join(fresh.dir, 'other.db')]);
    expect(refusedCut.code).toBe(1);
    expect(refusedCut.stderr).toMatch(/cut short|cut or edited/);
    const again = await runRelayCli(['user', 'import', '--in', archive, '--db', join(fresh.dir, 'other.db')]);
    expect(again.code).toBe(0);
  });
});
