import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { UserId } from '@keel/engine';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { GENESIS_HASH, auditUserRef, hashLegacyAuditRow } from '../src/audit/audit-chain.js';
import { auditVerifyCommand } from '../src/commands/audit-verify.js';
import type { CommandIo } from '../src/commands/command.js';
import type { AuditDraft } from '../src/storage/relay-store.js';
import { MIGRATIONS, openSqliteStore } from '../src/storage/sqlite-store.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'keel-audit-verify-'));
  dirs.push(dir);
  return dir;
};

const userId = () => `u_${randomBytes(32).toString('base64url')}` as UserId;
const T0 = 1_760_000_000_000;

/** Runs `audit verify` in-process on `path`; what it printed and its exit status. */
const verify = async (path: string) => {
  let out = '';
  let err = '';
  const io: CommandIo = { out: (t) => (out += t), err: (t) => (err += t), env: {}, now: () => T0 };
  const code = await auditVerifyCommand(['verify', '--db', path], io);
  return { code, out, err };
};

/** A relay database with `n` audit rows (tier changes of two users, payment events without one). */
const trailOf = async (n: number): Promise<string> => {
  const path = join(tempDir(), 'relay.db');
  const store = openSqliteStore({ path });
  const users = [userId(), userId()];
  const drafts: AuditDraft[] = Array.from({ length: n }, (_, i) => ({
    actor: i % 3 === 0 ? 'webhook' : 'operator',
    op: i % 3 === 0 ? 'payment.event' : 'tier.set',
    userId: i % 3 === 0 ? null : users[i % 2]!,
    outcome: 'applied',
    detail: { i, to: 'premium' },
  }));
  // Several transactions, as a running relay writes them.
  for (let i = 0; i < n; i += 4) await store.appendAudit(drafts.slice(i, i + 4), T0 + i);
  await store.close();
  return path;
};

/** Opens the file as an attacker with SQL access would: the append-only triggers dropped. */
const tamper = (path: string, sql: string): void => {
  const db = new Database(path);
  db.exec('DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;');
  db.exec(sql);
  db.close();
};

describe('keel-relay audit verify', () => {
  it('passes an intact trail and prints its head', async () => {
    const path = await trailOf(12);
    const result = await verify(path);
    expect(result.code).toBe(0);
    expect(result.out).toMatch(/^audit trail OK: 12 rows, head [0-9a-f]{64}\n$/);
  });

  it('names an edited row', async () => {
    const path = await trailOf(12);
    tamper(path, `UPDATE audit SET outcome = 'refused' WHERE seq = 7`);
    const result = await verify(path);
    expect(result.code).toBe(1);
    expect(result.out).toContain('BROKEN at seq 7 (altered)');
    expect(result.out).toContain('6 rows before it verified');
  });

  it('names an edited row whose hash was recomputed by the row after it', async () => {
    const path = await trailOf(12);
    const db = new Database(path);
    const row = db.prepare<[], { seq: number; at: number; actor: string; op: string; user_ref: string | null; outcome: string; detail: string; prev_hash: string }>(
      `SELECT * FROM audit WHERE seq = 5`,
    ).get()!;
    db.close();
    const { hashAuditRow } = await import('../src/audit/audit-chain.js');
    const forged = hashAuditRow(row.prev_hash, { seq: 5, at: row.at, actor: row.actor, op: row.op, userRef: row.user_ref, outcome: 'forged', detail: row.detail });
    tamper(path, `UPDATE audit SET outcome = 'forged', hash = '${forged}' WHERE seq = 5`);
    const result = await verify(path);
    expect(result.code).toBe(1);
    expect(result.out).toContain('BROKEN at seq 6 (unlinked)');
    expect(result.out).toContain('row 5 was edited');
  });

  it('names a deleted row', async () => {
    const path = await trailOf(12);
    tamper(path, `DELETE FROM audit WHERE seq = 4`);
    const result = await verify(path);
    expect(result.code).toBe(1);
    expect(result.out).toContain('BROKEN at seq 4 (missing)');
    expect(result.out).toContain('row 4 is missing');
  });

  it('names swapped rows', async () => {
    const path = await trailOf(12);
    tamper(path, `UPDATE audit SET seq = -1 WHERE seq = 9; UPDATE audit SET seq = 9 WHERE seq = 10; UPDATE audit SET seq = 10 WHERE seq = -1;`);
    const result = await verify(path);
    expect(result.code).toBe(1);
    expect(result.out).toContain('BROKEN at seq 9 (reordered)');
    expect(result.out).toContain('follows the row now at seq 10');
  });

  it('names the first break of a trail of 20,000 rows, read a page at a time', async () => {
    const path = join(tempDir(), 'relay.db');
    const store = openSqliteStore({ path });
    const user = userId();
    const drafts = Array.from({ length: 1000 }, (_, i): AuditDraft => ({ actor: 'operator', op: 'tier.set', userId: user, outcome: 'applied', detail: { i } }));
    for (let i = 0; i < 20; i++) await store.appendAudit(drafts, T0 + i);
    await store.close();
    expect((await verify(path)).out).toContain('OK: 20000 rows');
    tamper(path, `UPDATE audit SET detail = '{"i":-1}' WHERE seq = 15001`);
    const result = await verify(path);
    expect(result.out).toContain('BROKEN at seq 15001 (altered)');
  });

  it('verifies a trail of 100,000 sync rows (as the sync audit writes them) in reasonable time, and names a break near its end', async () => {
    const path = join(tempDir(), 'relay.db');
    const store = openSqliteStore({ path });
    const users = [userId(), userId(), userId()];
    // 512-row batches, as observe/sync-audit.ts appends them, each with keyed device and doc refs.
    for (let batch = 0; batch * 512 < 100_000; batch++) {
      const n = Math.min(512, 100_000 - batch * 512);
      const drafts = Array.from({ length: n }, (_, i): AuditDraft => ({
        actor: 'device',
        op: 'sync.commit',
        userId: users[i % 3]!,
        outcome: 'committed',
        detail: { lane: (i % 10) + 1, envelopes: 1, bytes: 200 + i, latencyMs: i % 40, tier: 'premium' },
        refs: { device: `d_${i % 7}`, doc: `doc_${i % 11}` },
        at: T0 + batch * 250,
      }));
      await store.appendAudit(drafts, T0 + batch * 250 + 250);
    }
    await store.close();
    const started = performance.now();
    const result = await verify(path);
    const seconds = (performance.now() - started) / 1000;
    console.log(`audit verify: 100,000 rows in ${seconds.toFixed(2)} s`);
    expect(result.out).toContain('OK: 100000 rows');
    // Paged and linear: well under a minute even on a loaded machine (about 1 s unloaded).
    expect(seconds).toBeLessThan(60);
    tamper(path, `UPDATE audit SET detail = replace(detail, '"envelopes":1', '"envelopes":2') WHERE seq = 99002`);
    expect((await verify(path)).out).toContain('BROKEN at seq 99002 (altered)');
  }, 120_000);

  it('refuses a file that is not a relay database, and a missing one', async () => {
    const dir = tempDir();
    const other = new Database(join(dir, 'other.db'));
    other.exec('CREATE TABLE t (x)');
    other.close();
    expect((await verify(join(dir, 'other.db'))).code).toBe(1);
    const missing = await verify(join(dir, 'missing.db'));
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('no database at');
  });
});

describe('audit rows and deleted users', () => {
  it('erases a user id from the trail and allows no other update', async () => {
    const path = await trailOf(9);
    const db = new Database(path);
    const named = db.prepare<[], { user_id: string }>(`SELECT DISTINCT user_id FROM audit WHERE user_id IS NOT NULL`).all();
    expect(named.length).toBe(2);
    db.prepare(`UPDATE audit SET user_id = NULL WHERE user_id = ?`).run(named[0]!.user_id);
    expect(() => db.exec(`UPDATE audit SET outcome = 'x' WHERE seq = 2`)).toThrow(/append-only/);
    expect(() => db.exec(`UPDATE audit SET user_ref = NULL WHERE seq = 2`)).toThrow(/append-only/);
    expect(() => db.exec(`UPDATE audit SET user_id = 'u_other' WHERE seq = 3`)).toThrow(/append-only/);
    expect(() => db.exec(`DELETE FROM audit WHERE seq = 2`)).toThrow(/append-only/);
    db.close();
    expect((await verify(path)).code).toBe(0);
  });

  it('re-links a trail written before user refs, and keeps what the old chain said', async () => {
    const path = join(tempDir(), 'relay.db');
    // A database as release 10 left it, with a legacy chain over plain user ids.
    const old = new Database(path);
    old.exec(`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
    for (const migration of MIGRATIONS.slice(0, 10)) old.exec(migration);
    old.prepare(`INSERT INTO meta (key, value) VALUES ('schema_version', '10')`).run();
    const user = userId();
    let prev = GENESIS_HASH;
    for (let seq = 1; seq <= 3; seq++) {
      const fields = { seq, at: T0, actor: 'operator', op: 'tier.set', userId: seq === 2 ? null : user, userRef: null, outcome: 'applied', detail: '{}' };
      const hash = hashLegacyAuditRow(prev, fields);
      old.prepare(`INSERT INTO audit (seq, at, actor, op, user_id, outcome, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(
        seq, T0, 'operator', 'tier.set', fields.userId, 'applied', '{}', prev, hash,
      );
      prev = hash;
    }
    old.close();

    const store = openSqliteStore({ path });
    const rows = await store.readAudit(0, 10);
    await store.close();
    const db = new Database(path, { readonly: true });
    const meta = Object.fromEntries(db.prepare<[], { key: string; value: string }>(`SELECT key, value FROM meta`).all().map((r) => [r.key, r.value]));
    db.close();
    expect(JSON.parse(meta.audit_legacy!)).toEqual({ rows: 3, head: prev, brokenAt: null });
    const key = Buffer.from(meta.audit_key!, 'hex');
    expect(rows.map((r) => r.userRef)).toEqual([auditUserRef(key, user), null, auditUserRef(key, user)]);
    expect((await verify(path)).code).toBe(0);
  });

  it('records where a legacy chain was already broken when it is re-linked', async () => {
    const path = join(tempDir(), 'relay.db');
    const old = new Database(path);
    old.exec(`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
    for (const migration of MIGRATIONS.slice(0, 10)) old.exec(migration);
    old.prepare(`INSERT INTO meta (key, value) VALUES ('schema_version', '10')`).run();
    old.prepare(`INSERT INTO audit (seq, at, actor, op, user_id, outcome, detail, prev_hash, hash) VALUES (1, 1, 'a', 'b', NULL, 'c', '{}', ?, ?)`).run(
      GENESIS_HASH,
      'f'.repeat(64),
    );
    old.close();
    await openSqliteStore({ path }).close();
    const db = new Database(path, { readonly: true });
    const legacy = db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'audit_legacy'`).get()!;
    db.close();
    expect(JSON.parse(legacy.value)).toMatchObject({ rows: 1, brokenAt: 1 });
  });
});

describe('audit chain over a copy', () => {
  it('a verbatim copy of a verified file verifies', async () => {
    const path = await trailOf(5);
    const copy = join(tempDir(), 'copy.db');
    copyFileSync(path, copy);
    expect((await verify(copy)).code).toBe(0);
  });
});
