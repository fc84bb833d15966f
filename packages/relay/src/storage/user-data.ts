import { createHash } from 'node:crypto';
import { chmodSync, closeSync, openSync } from 'node:fs';
import { UserIdSchema, describeIssues } from '@keel/engine';
import type Database from 'better-sqlite3';
import * as z from 'zod';
import type { AuditDraft, AuditRecord } from './relay-store.js';
import { USER_TABLES, type UserTable, decodeRow, deleteUserRows, encodeRow, insertRowStatement, rowSchema, selectUserRows } from './user-tables.js';

/** First line of an export: what it is, whose, from where. */
export const EXPORT_FORMAT = 'keel-user-export';
export const EXPORT_VERSION = 1;

const ExportHeaderSchema = z.strictObject({
  format: z.literal(EXPORT_FORMAT),
  version: z.literal(EXPORT_VERSION),
  user: UserIdSchema,
  relayId: z.string().max(256).nullable(),
  exportedAt: z.number().int().min(0),
});
export type ExportHeader = z.infer<typeof ExportHeaderSchema>;

/** Audit rows that named the user, for the user to read; not imported (they belong to this relay's chain). */
const ExportAuditSchema = z.strictObject({
  audit: z.strictObject({ seq: z.number().int(), at: z.number().int(), actor: z.string(), op: z.string(), outcome: z.string(), detail: z.string() }),
});
const ExportRowSchema = z.strictObject({ table: z.string().max(64), row: z.record(z.string(), z.unknown()) });
/** Last line: how many lines came before it and the SHA-256 of them, so a cut or edited file is refused whole. */
const ExportTrailerSchema = z.strictObject({ end: z.literal(true), lines: z.number().int().min(1), sha256: z.string().regex(/^[0-9a-f]{64}$/) });

/** A refusal of an operator command on user data: a stable code and a sentence. */
export class UserDataError extends Error {
  constructor(
    readonly code: 'NO_SUCH_USER' | 'USER_EXISTS' | 'BAD_EXPORT' | 'IN_USE',
    message: string,
  ) {
    super(message);
    this.name = 'UserDataError';
  }
}

export interface DeleteOutcome {
  /** Rows removed per table. */
  readonly removed: Readonly<Record<string, number>>;
  /** Audit rows whose plain user id was erased (their keyed ref stays). */
  readonly auditErased: number;
  /** The audit row recording the deletion (user_id NULL, user_ref set). */
  readonly audit: AuditRecord;
  /** False when another connection kept the WAL from being emptied (old pages may remain there until the next checkpoint). */
  readonly walTruncated: boolean;
}

export interface ExportOutcome {
  readonly lines: number;
  readonly rows: Readonly<Record<string, number>>;
}

export interface ImportOutcome {
  readonly user: string;
  readonly rows: Readonly<Record<string, number>>;
  /** The relay id the export came from, and whether this database has the same one (devices pin it). */
  readonly relayId: string | null;
  readonly relayIdMatches: boolean;
}

export interface UserDataOps {
  /** Removes every row of the user in one transaction, erases the id from the audit trail, records the deletion under the user's keyed ref. */
  deleteUser(userId: string, now: number): Promise<DeleteOutcome>;
  /** Writes the user's export, one JSON line per `write` call, from one read snapshot; audited. */
  exportUser(userId: string, write: (line: string) => void, now: number): Promise<ExportOutcome>;
  /** Restores a user from export lines in one transaction; refused whole if anything is wrong. Audited. */
  importUser(lines: Iterable<string>, now: number): Promise<ImportOutcome>;
  /** SQLite's online backup into a new 0600 file, in one step (a consistent snapshot). */
  backup(to: string): Promise<void>;
  /**
   * Takes the database for this connection alone (SQLite exclusive locking) or throws IN_USE:
   * commands that rewrite a user's rows run only while no relay serves the file.
   */
  claimExclusive(): void;
  /** The seq of the audit row whose hash is `hash` (one scan; `audit verify` asks once, at a break). */
  auditSeqOfHash(hash: string): number | undefined;
  /** SQLite's `PRAGMA integrity_check`: 'ok', or its first findings. */
  integrityCheck(): string;
}

/** The relay id this database keeps, if it has one. */
const relayIdOf = (db: Database.Database): string | null =>
  db.prepare<[], { value: string }>(`SELECT value FROM meta WHERE key = 'relay_id'`).get()?.value ?? null;

const parseLine = <T extends z.ZodType>(schema: T, line: string, where: string): z.infer<T> => {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    throw new UserDataError('BAD_EXPORT', `${where}: not JSON`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new UserDataError('BAD_EXPORT', `${where}: ${describeIssues(parsed.error)}`);
  return parsed.data;
};

export const createUserDataOps = (
  db: Database.Database,
  deps: {
    readonly appendAudit: (drafts: readonly AuditDraft[], now: number) => AuditRecord[];
    /** The user's keyed audit ref, under which a deletion is remembered. */
    readonly userRef: (userId: string) => string;
  },
): UserDataOps => {
  const tableByName = new Map<string, UserTable>(USER_TABLES.map((t) => [t.name, t]));
  const schemas = new Map(USER_TABLES.map((t) => [t.name, rowSchema(t)]));
  const hasUser = db.prepare<[string], { n: number }>(`SELECT 1 AS n FROM users WHERE user_id = ?`);

  const deleteTx = db.transaction((userId: string, now: number) => {
    const removed = deleteUserRows(db, userId);
    const auditErased = db.prepare(`UPDATE audit SET user_id = NULL WHERE user_id = ?`).run(userId).changes;
    const total = Object.values(removed).reduce((a, b) => a + b, 0);
    // Remembered by ref, so the user's devices cannot create the user again.
    db.prepare(`INSERT INTO deleted_users (user_ref, deleted_at) VALUES (?, ?) ON CONFLICT (user_ref) DO NOTHING`).run(deps.userRef(userId), now);
    const [audit] = deps.appendAudit(
      [{ actor: 'operator', op: 'user.delete', userId: userId as AuditDraft['userId'], eraseUserId: true, outcome: total > 0 ? 'deleted' : 'nothing', detail: { rows: total, auditErased } }],
      now,
    );
    return { removed, auditErased, audit: audit! };
  });

  const importTx = db.transaction((lines: Iterable<string>, now: number): ImportOutcome => {
    const hash = createHash('sha256');
    let header: ExportHeader | undefined;
    let count = 0;
    let ended = false;
    const rows: Record<string, number> = {};
    const inserts = new Map<string, Database.Statement>();
    for (const line of lines) {
      if (line === '') continue;
      if (ended) throw new UserDataError('BAD_EXPORT', 'lines after the end line');
      const where = `line ${count + 1}`;
      if (!header) {
        header = parseLine(ExportHeaderSchema, line, where);
        if (hasUser.get(header.user)) throw new UserDataError('USER_EXISTS', 'this relay already holds that user; delete it first or import into a fresh database');
      } else if (line.startsWith('{"end"')) {
        const trailer = parseLine(ExportTrailerSchema, line, where);
        if (trailer.lines !== count || trailer.sha256 !== hash.digest('hex')) throw new UserDataError('BAD_EXPORT', 'the end line does not match the lines before it: the file was cut or edited');
        ended = true;
        continue;
      } else if (line.startsWith('{"audit"')) {
        parseLine(ExportAuditSchema, line, where);
      } else {
        const { table: name, row } = parseLine(ExportRowSchema, line, where);
        const table = tableByName.get(name);
        if (!table) throw new UserDataError('BAD_EXPORT', `${where}: no table "${name.slice(0, 64)}" holds user data`);
        const parsed = schemas.get(name)!.safeParse(row);
        if (!parsed.success) throw new UserDataError('BAD_EXPORT', `${where} (${name}): ${describeIssues(parsed.error)}`);
        if (parsed.data.user_id !== header.user) throw new UserDataError('BAD_EXPORT', `${where} (${name}): a row of another user`);
        let insert = inserts.get(name);
        if (!insert) inserts.set(name, (insert = insertRowStatement(db, table)));
        try {
          insert.run(decodeRow(table, parsed.data));
        } catch (error) {
          // A device id or subscription id this relay already holds for someone else.
          throw new UserDataError('BAD_EXPORT', `${where} (${name}): ${error instanceof Error ? error.message : String(error)}`);
        }
        rows[name] = (rows[name] ?? 0) + 1;
      }
      hash.update(line).update('\n');
      count++;
    }
    if (!header) throw new UserDataError('BAD_EXPORT', 'empty file');
    if (!ended) throw new UserDataError('BAD_EXPORT', 'no end line: the file was cut short');
    if (!hasUser.get(header.user)) throw new UserDataError('BAD_EXPORT', 'the export holds no user row');
    const total = Object.values(rows).reduce((a, b) => a + b, 0);
    // An import brings a deleted user back on purpose (a deletion undone from its export).
    db.prepare(`DELETE FROM deleted_users WHERE user_ref = ?`).run(deps.userRef(header.user));
    deps.appendAudit([{ actor: 'operator', op: 'user.import', userId: header.user, outcome: 'imported', detail: { rows: total } }], now);
    // A fresh database takes the export's relay id: the user's devices pinned it.
    if (relayIdOf(db) === null && header.relayId !== null) {
      db.prepare(`INSERT INTO meta (key, value) VALUES ('relay_id', ?)`).run(header.relayId);
    }
    const relayId = relayIdOf(db);
    return { user: header.user, rows, relayId: header.relayId, relayIdMatches: relayId === null || relayId === header.relayId };
  });

  return {
    deleteUser: async (userId, now) => {
      const outcome = deleteTx.immediate(userId, now);
      // Frames of the user's rows from before the deletion may sit in the WAL: copy the zeroed
      // pages into the database and empty the WAL.
      const [result] = db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
      return { ...outcome, walTruncated: result?.busy === 0 };
    },

    exportUser: async (userId, write, now) => {
      const hash = createHash('sha256');
      let lines = 0;
      const emit = (line: string) => {
        write(`${line}\n`);
        hash.update(line).update('\n');
        lines++;
      };
      const rows: Record<string, number> = {};
      // One read transaction: the export is one consistent snapshot even while a relay writes.
      db.transaction(() => {
        if (!hasUser.get(userId)) throw new UserDataError('NO_SUCH_USER', 'this relay holds no such user');
        const header: ExportHeader = { format: EXPORT_FORMAT, version: EXPORT_VERSION, user: userId as ExportHeader['user'], relayId: relayIdOf(db), exportedAt: now };
        emit(JSON.stringify(header));
        for (const table of USER_TABLES) {
          let n = 0;
          for (const row of selectUserRows(db, table, userId)) {
            emit(JSON.stringify({ table: table.name, row: encodeRow(table, row) }));
            n++;
          }
          rows[table.name] = n;
        }
        for (const a of db
          .prepare<[string], { seq: number; at: number; actor: string; op: string; outcome: string; detail: string }>(
            `SELECT seq, at, actor, op, outcome, detail FROM audit WHERE user_id = ? ORDER BY seq`,
          )
          .iterate(userId)) {
          emit(JSON.stringify({ audit: a }));
        }
      }).deferred();
      write(`${JSON.stringify({ end: true, lines, sha256: hash.digest('hex') })}\n`);
      const total = Object.values(rows).reduce((a, b) => a + b, 0);
      db.transaction(() => deps.appendAudit([{ actor: 'operator', op: 'user.export', userId: userId as AuditDraft['userId'], outcome: 'exported', detail: { rows: total } }], now)).immediate();
      return { lines: lines + 1, rows };
    },

    importUser: async (lines, now) => importTx.immediate(lines, now),

    backup: async (to) => {
      // 'wx': never over an existing file; the mode is exact after chmod whatever the umask.
      closeSync(openSync(to, 'wx', 0o600));
      chmodSync(to, 0o600);
      // All pages in one step: one read snapshot, so writers in other processes cannot restart it.
      await db.backup(to, { progress: () => 1 << 30 });
    },

    auditSeqOfHash: (hash) => db.prepare<[string], { seq: number }>(`SELECT seq FROM audit WHERE hash = ? LIMIT 1`).get(hash)?.seq,

    integrityCheck: () =>
      (db.pragma('integrity_check(10)') as { integrity_check: string }[]).map((r) => r.integrity_check).join('; '),

    claimExclusive: () => {
      const timeout = db.pragma('busy_timeout', { simple: true }) as number;
      db.pragma('busy_timeout = 0');
      try {
        db.pragma('locking_mode = EXCLUSIVE');
        // The first write transaction takes the file's exclusive lock and keeps it until close.
        db.exec('BEGIN EXCLUSIVE; COMMIT');
      } catch (error) {
        db.pragma('locking_mode = NORMAL');
        if (error instanceof Error && 'code' in error && String(error.code).startsWith('SQLITE_BUSY')) {
          throw new UserDataError('IN_USE', 'another process (a running relay?) has this database open; stop it first');
        }
        throw error;
      } finally {
        db.pragma(`busy_timeout = ${timeout}`);
      }
    },
  };
};
