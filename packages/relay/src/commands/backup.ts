import { rmSync } from 'node:fs';
import * as z from 'zod';
import { type Command, CommandFailed, parseCommand, runCommand } from './command.js';
import { describeVerdict, verifyAuditTrail } from './audit-verify.js';
import { databasePath, openExistingStore } from './database.js';

const USAGE = 'keel-relay backup --to <file> [--db <file>]';

const ArgsSchema = z.object({
  positionals: z.tuple([], { error: 'backup takes no argument' }),
  to: z.string({ error: 'give the backup file to write with --to <file>' }).min(1),
  db: z.string().min(1).optional(),
});

/**
 * `backup`: SQLite's online backup API from a read-only connection, safe while the relay
 * serves (it is one more WAL reader). The copy is one consistent snapshot: every update the
 * relay acknowledged before the copy started is in it. The new file is 0600 and is checked
 * (schema and audit chain) before the command reports success.
 */
export const backupCommand: Command = (argv, io) =>
  runCommand(USAGE, io, async () => {
    const args = parseCommand(argv, { to: { type: 'string' }, db: { type: 'string' } }, ArgsSchema);
    const source = openExistingStore(databasePath(args.db, io.env), { readonly: true });
    try {
      await source.backup(args.to).catch((error: unknown) => {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'EEXIST') throw new CommandFailed(`${args.to} exists; give a new file`);
        // Never leave a half-written copy that looks like a backup.
        rmSync(args.to, { force: true });
        throw new CommandFailed(`backup failed: ${error instanceof Error ? error.message : String(error)}`);
      });
    } finally {
      await source.close();
    }
    const copy = openExistingStore(args.to, { readonly: true });
    try {
      const verdict = await verifyAuditTrail(copy);
      io.out(`backed up to ${args.to}; ${describeVerdict(verdict)}\n`);
      if (!verdict.ok) throw new CommandFailed('the copy\'s audit trail does not verify (nor, then, does the source\'s)');
    } finally {
      await copy.close();
    }
  });
