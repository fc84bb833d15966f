import { UserIdSchema } from '@keel/engine';
import * as z from 'zod';
import { UserDataError } from '../storage/user-data.js';
import { type Command, CommandFailed, parseCommand, runCommand } from './command.js';
import { databasePath, openExistingStore } from './database.js';
import { writePrivateFile } from './private-file.js';

const USAGE = 'keel-relay user export <user-id> --out <file> [--db <file>]';

const ArgsSchema = z.object({
  positionals: z.tuple([z.literal('export'), UserIdSchema], { error: 'give one user id (u_ + 43 base64url characters)' }),
  out: z.string({ error: 'give the archive to write with --out <file>' }).min(1),
  db: z.string().min(1).optional(),
});

/**
 * `user export`: the user's rows as a JSON-lines archive (docs/data-rights.md), from one read
 * snapshot, so it runs while the relay serves (WAL readers do not block writers). Audited.
 */
export const userExportCommand: Command = (argv, io) =>
  runCommand(USAGE, io, async () => {
    const args = parseCommand(argv, { out: { type: 'string' }, db: { type: 'string' } }, ArgsSchema);
    const store = openExistingStore(databasePath(args.db, io.env));
    try {
      const outcome = await writePrivateFile(args.out, (write) => store.exportUser(args.positionals[1], write, io.now())).catch((error: unknown) => {
        if (error instanceof UserDataError) throw new CommandFailed(error.message);
        throw error;
      });
      const rows = Object.entries(outcome.rows)
        .filter(([, n]) => n > 0)
        .map(([table, n]) => `${table} ${n}`)
        .join(', ');
      io.out(`exported ${outcome.lines} lines to ${args.out} (${rows})\n`);
    } finally {
      await store.close();
    }
  });
