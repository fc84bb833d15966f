import { existsSync } from 'node:fs';
import * as z from 'zod';
import { type Command, CommandFailed, parseCommand, runCommand } from './command.js';
import { describeVerdict, verifyAuditTrail } from './audit-verify.js';
import { openExistingStore } from './database.js';

const USAGE = 'keel-relay restore --from <backup> --db <new-file>   (relay stopped)';

const ArgsSchema = z.object({
  positionals: z.tuple([], { error: 'restore takes no argument' }),
  from: z.string({ error: 'give the backup to restore with --from <file>' }).min(1),
  db: z.string({ error: 'give the database to create with --db <file>' }).min(1),
});

/**
 * `restore`: checks a backup (this relay's schema, SQLite's integrity check, the audit chain)
 * and copies it, with SQLite's backup API, into a new 0600 database file. Never over an
 * existing database or one with a -wal left beside it: move the old one away first, with the
 * relay stopped, then start the relay on the restored file.
 */
export const restoreCommand: Command = (argv, io) =>
  runCommand(USAGE, io, async () => {
    const args = parseCommand(argv, { from: { type: 'string' }, db: { type: 'string' } }, ArgsSchema);
    for (const file of [args.db, `${args.db}-wal`, `${args.db}-shm`]) {
      if (existsSync(file)) throw new CommandFailed(`${file} exists; restore creates a new database (move the old one away first, relay stopped)`);
    }
    const backup = openExistingStore(args.from, { readonly: true });
    try {
      const integrity = backup.integrityCheck();
      if (integrity !== 'ok') throw new CommandFailed(`${args.from} fails SQLite's integrity check: ${integrity}`);
      const verdict = await verifyAuditTrail(backup);
      if (!verdict.ok) throw new CommandFailed(`${args.from}: ${describeVerdict(verdict)}`);
      await backup.backup(args.db);
      io.out(`restored ${args.from} to ${args.db}; ${describeVerdict(verdict)}\n`);
    } finally {
      await backup.close();
    }
  });
