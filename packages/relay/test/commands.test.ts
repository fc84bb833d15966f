import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import type { CommandIo } from '../src/commands/command.js';
import { COMMANDS } from '../src/commands/index.js';
import { openSqliteStore } from '../src/storage/sqlite-store.js';

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'keel-commands-'));
  dirs.push(dir);
  return dir;
};

/** Runs `keel-relay <argv…>` in-process; what it printed and its exit status. */
const run = async (argv: readonly string[], env: Record<string, string> = {}) => {
  let out = '';
  let err = '';
  const io: CommandIo = { out: (t) => (out += t), err: (t) => (err += t), env, now: () => 1_760_000_000_000 };
  const command = COMMANDS[argv[0]!];
  if (!command) throw new Error(`no command ${argv[0]}`);
  const code = await command(argv.slice(1), io);
  return { code, out, err };
};

const USER = `u_${'A'.repeat(43)}`;

const relayDb = async (): Promise<string> => {
  const path = join(tempDir(), 'relay.db');
  await openSqliteStore({ path }).close();
  return path;
};

describe('operator commands refuse bad input with a clear message and the right status', () => {
  it('usage errors exit 64 and print the usage', async () => {
    const db = await relayDb();
    for (const argv of [
      ['user', 'export', 'not-a-user', '--out', 'x', '--db', db],
      ['user', 'export', USER, '--db', db],
      ['user', 'export', USER, '--out', 'x', '--db', db, '--bogus'],
      ['user', 'delete', USER, 'extra', '--db', db],
      ['user', 'delete', USER],
      ['user', 'import', '--db', db],
      ['user', 'frobnicate'],
      ['backup', '--db', db],
      ['restore', '--from', 'x'],
      ['signup-token', 'create', '--expires', '0d', '--db', db],
      ['signup-token', 'create', '--expires', '366d', '--db', db],
      ['signup-token', 'revoke', '--db', db],
      ['audit', 'check', '--db', db],
    ]) {
      const result = await run(argv);
      expect(result.code, argv.join(' ')).toBe(64);
      expect(result.err, argv.join(' ')).toMatch(/^keel-relay: /);
    }
    const noDb = await run(['user', 'delete', USER]);
    expect(noDb.err).toContain('give the database with --db');
  });

  it('refusals exit 1 and leave files as they were', async () => {
    const db = await relayDb();
    const dir = tempDir();
    expect((await run(['user', 'delete', USER, '--db', db])).err).toContain('no such user');
    expect((await run(['user', 'delete', USER, '--db', join(dir, 'missing.db')])).err).toContain('no database at');
    expect(existsSync(join(dir, 'missing.db'))).toBe(false);

    const unknownUser = await run(['user', 'export', USER, '--out', join(dir, 'export.jsonl'), '--db', db]);
    expect(unknownUser.code).toBe(1);
    expect(unknownUser.err).toContain('no such user');
    // No half-written archive is left behind.
    expect(existsSync(join(dir, 'export.jsonl'))).toBe(false);

    writeFileSync(join(dir, 'taken'), 'precious');
    const taken = await run(['backup', '--to', join(dir, 'taken'), '--db', db]);
    expect(taken.code).toBe(1);
    expect(taken.err).toContain('exists');
    expect(readFileSync(join(dir, 'taken'), 'utf8')).toBe('precious');

    writeFileSync(join(dir, 'garbage.jsonl'), '{"format":"something-else"}\n');
    const garbage = await run(['user', 'import', '--in', join(dir, 'garbage.jsonl'), '--db', db]);
    expect(garbage.code).toBe(1);
    expect(garbage.err).toContain('line 1');

    const notSqlite = join(dir, 'not.db');
    writeFileSync(notSqlite, 'not a database at all, just text that is long enough to be read');
    const restore = await run(['restore', '--from', notSqlite, '--db', join(dir, 'restored.db')]);
    expect(restore.code).toBe(1);
    expect(existsSync(join(dir, 'restored.db'))).toBe(false);
  });

  it('a signup token is printed once and only its hash is kept', async () => {
    const db = await relayDb();
    const result = await run(['signup-token', 'create', '--expires', '12h', '--db', db]);
    expect(result.code).toBe(0);
    const token = result.out.trim();
    expect(token).toMatch(/^kst_[A-Za-z0-9_-]{43}$/);
    const raw = new Database(db, { readonly: true });
    const rows = raw.prepare<[], { token_hash: string; created_at: number; expires_at: number; used_at: number | null }>(`SELECT * FROM signup_tokens`).all();
    raw.close();
    expect(rows).toHaveLength(1);
    expect(rows[0]!.expires_at - rows[0]!.created_at).toBe(12 * 3_600_000);
    expect(rows[0]!.used_at).toBeNull();
    expect(readFileSync(db).includes(Buffer.from(token))).toBe(false);
    if (existsSync(`${db}-wal`)) expect(readFileSync(`${db}-wal`).includes(Buffer.from(token))).toBe(false);
  });
});
