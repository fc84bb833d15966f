import type Database from 'better-sqlite3';
import * as z from 'zod';

/**
 * Every table that holds rows of one user, the columns of each (as the migrations left them)
 * and how each column travels in an export. One list serves export, import and delete, so a
 * table added to the schema and not here fails the completeness test (test/user-data.test.ts),
 * not silently a user's right to erasure.
 */
type ColumnType = 'text' | 'int' | 'blob';
interface Column {
  readonly type: ColumnType;
  readonly nullable?: true;
}
export interface UserTable {
  readonly name: string;
  readonly columns: Readonly<Record<string, Column>>;
}

const text: Column = { type: 'text' };
const int: Column = { type: 'int' };
const blob: Column = { type: 'blob' };
const textOrNull: Column = { type: 'text', nullable: true };
const intOrNull: Column = { type: 'int', nullable: true };
const blobOrNull: Column = { type: 'blob', nullable: true };

/** In insert order: a row's foreign keys point only at tables earlier in the list. Deletes run in reverse. */
export const USER_TABLES: readonly UserTable[] = [
  {
    name: 'users',
    columns: {
      user_id: text,
      user_key: blob,
      created_at: int,
      recovery_key: blobOrNull,
      recovery_gen: int,
      escrow: blobOrNull,
      reset: textOrNull,
      reset_at: intOrNull,
    },
  },
  {
    name: 'devices',
    columns: {
      device_id: text,
      user_id: text,
      device_key: blob,
      issuer: textOrNull,
      issued_at: int,
      cert_sig: blob,
      registered_at: int,
      revoked_at: intOrNull,
    },
  },
  { name: 'vouches', columns: { device_id: text, issuer: text, user_id: text, issued_at: int, sig: blob, created_at: int } },
  { name: 'revocations', columns: { device_id: text, user_id: text, record: text, created_at: int } },
  { name: 'epochs', columns: { user_id: text, epoch: int, record: text, created_at: int } },
  { name: 'docs', columns: { user_id: text, doc_id: text, head_seq: int, created_at: int } },
  { name: 'doc_authors', columns: { user_id: text, doc_id: text, device_id: text, last_counter: int } },
  {
    name: 'log',
    columns: {
      user_id: text,
      doc_id: text,
      seq: int,
      device_id: text,
      counter: int,
      kind: text,
      epoch: int,
      lane: int,
      nonce: blob,
      ct: blob,
      sig: blob,
      received_at: int,
      part_index: intOrNull,
      part_count: intOrNull,
    },
  },
  {
    name: 'snapshots',
    columns: {
      user_id: text,
      doc_id: text,
      base: int,
      device_id: text,
      counter: int,
      epoch: int,
      lane: int,
      nonce: blob,
      ct: blob,
      sig: blob,
      received_at: int,
    },
  },
  { name: 'entitlements', columns: { user_id: text, tier: text, updated_at: int, source: text } },
  { name: 'usage', columns: { user_id: text, day: text, bytes: int } },
  {
    name: 'subscriptions',
    columns: { subscription_id: text, user_id: text, price_id: textOrNull, tier: textOrNull, status: text, event_at: int, updated_at: int },
  },
  { name: 'payment_failures', columns: { user_id: text, at: int } },
  { name: 'grace_periods', columns: { user_id: text, paid_tier: text, started_at: int, ends_at: int, failures: int } },
  { name: 'crisis_signals', columns: { user_id: text, signal_id: text, signal: text, received_at: int } },
];

/**
 * Tables that hold no user's rows, or keep them in another form: the audit trail is append-only
 * (a deletion erases the plain user id from it and keeps the keyed pseudonym), and
 * deleted_users remembers a deleted user by that pseudonym only.
 */
export const NON_USER_TABLES: readonly string[] = ['meta', 'payment_events', 'audit', 'signup_tokens', 'deleted_users'];

const MAX_TEXT = 1 << 20;
const MAX_BLOB_B64 = 96 << 20;
const SAFE_INT = z.number().int().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER);

const columnSchema = (column: Column): z.ZodType<string | number | null> => {
  const base =
    column.type === 'int'
      ? SAFE_INT
      : column.type === 'text'
        ? z.string().max(MAX_TEXT)
        : z.string().max(MAX_BLOB_B64).regex(/^[A-Za-z0-9+/]*={0,2}$/, 'a blob is standard base64');
  return column.nullable ? base.nullable() : base;
};

/** The zod schema of one exported row of `table`: exactly its columns, each of its type. */
export const rowSchema = (table: UserTable) =>
  z.strictObject(Object.fromEntries(Object.entries(table.columns).map(([name, column]) => [name, columnSchema(column)])));

/** A database row as it travels in JSON: blobs as standard base64. */
export const encodeRow = (table: UserTable, row: Readonly<Record<string, unknown>>): Record<string, string | number | null> => {
  const out: Record<string, string | number | null> = {};
  for (const [name, column] of Object.entries(table.columns)) {
    const value = row[name];
    if (value === null || value === undefined) out[name] = null;
    else if (column.type === 'blob') out[name] = Buffer.from(value as Uint8Array).toString('base64');
    else out[name] = value as string | number;
  }
  return out;
};

/** A validated JSON row back to SQLite values (base64 → Buffer). */
export const decodeRow = (table: UserTable, row: Readonly<Record<string, string | number | null>>): Record<string, string | number | Buffer | null> => {
  const out: Record<string, string | number | Buffer | null> = {};
  for (const [name, column] of Object.entries(table.columns)) {
    const value = row[name] ?? null;
    out[name] = column.type === 'blob' && typeof value === 'string' ? Buffer.from(value, 'base64') : value;
  }
  return out;
};

/** The user's rows of one table, streamed (`iterate`). */
export const selectUserRows = (db: Database.Database, table: UserTable, userId: string): IterableIterator<Record<string, unknown>> =>
  db.prepare<[string], Record<string, unknown>>(`SELECT ${Object.keys(table.columns).join(', ')} FROM ${table.name} WHERE user_id = ?`).iterate(userId);

/** A prepared insert of one row of `table` (named parameters). */
export const insertRowStatement = (db: Database.Database, table: UserTable): Database.Statement => {
  const names = Object.keys(table.columns);
  return db.prepare(`INSERT INTO ${table.name} (${names.join(', ')}) VALUES (${names.map((n) => `@${n}`).join(', ')})`);
};

/** Deletes the user's rows of every table, children first; returns the count per table. */
export const deleteUserRows = (db: Database.Database, userId: string): Record<string, number> => {
  const removed: Record<string, number> = {};
  for (const table of [...USER_TABLES].reverse()) {
    removed[table.name] = db.prepare(`DELETE FROM ${table.name} WHERE user_id = ?`).run(userId).changes;
  }
  return removed;
};
