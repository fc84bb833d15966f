import { existsSync } from 'node:fs';
import { ENV_VARS } from '../config.js';
import { type SqliteRelayStore, openSqliteStore } from '../storage/sqlite-store.js';
import { CommandFailed, UsageError } from './command.js';

/**
 * The database a command works on: `--db`, else the relay's own variable. No default file: an
 * operator command on a file nobody named could create or change the wrong database.
 */
export const databasePath = (flag: string | undefined, env: Readonly<Record<string, string | undefined>>): string => {
  const path = flag ?? env[ENV_VARS.db];
  if (path === undefined || path === '') throw new UsageError(`give the database with --db <file> (or ${ENV_VARS.db})`);
  return path;
};

/** Opens an existing relay database (migrating it unless read-only); a missing file is a refusal, never created. */
export const openExistingStore = (path: string, options: { readonly readonly?: boolean } = {}): SqliteRelayStore => {
  if (!existsSync(path)) throw new CommandFailed(`no database at ${path}`);
  return openStore(path, options);
};

/** Opens (or creates) a relay database; SQLite's refusal becomes one readable line. */
export const openStore = (path: string, options: { readonly readonly?: boolean } = {}): SqliteRelayStore => {
  try {
    return openSqliteStore({ path, ...(options.readonly ? { readonly: true } : {}) });
  } catch (error) {
    throw new CommandFailed(`cannot open database ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
};
