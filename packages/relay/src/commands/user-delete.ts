import { UserIdSchema } from '@keel/engine';
import * as z from 'zod';
import { UserDataError } from '../storage/user-data.js';
import { type Command, CommandFailed, parseCommand, runCommand } from './command.js';
import { databasePath, openExistingStore } from './database.js';

const USAGE = 'keel-relay user delete <user-id> [--db <file>]   (relay stopped)';

const ArgsSchema = z.object({
  positionals: z.tuple([z.literal('delete'), UserIdSchema], { error: 'give one user id (u_ + 43 base64url characters)' }),
  db: z.string().min(1).optional(),
});

/**
 * `user delete`: every row of the user goes in one transaction, the id is erased from the audit
 * trail (its keyed ref stays, so the chain verifies) and the deletion is audited under that ref.
 * Only with no relay serving the file (an exclusive lock says so): a running relay holds the
 * user's connections, sessions and timers, which would go on writing for a user that is gone.
 */
export const userDeleteCommand: Command = (argv, io) =>
  runCommand(USAGE, io, async () => {
    const args = parseCommand(argv, { db: { type: 'string' } }, ArgsSchema);
    const userId = args.positionals[1];
    const store = openExistingStore(databasePath(args.db, io.env));
    try {
      const outcome = await (async () => {
        store.claimExclusive();
        if (!(await store.hasUser(userId))) throw new CommandFailed('this relay holds no such user');
        return store.deleteUser(userId, io.now());
      })().catch((error: unknown) => {
        if (error instanceof UserDataError) throw new CommandFailed(error.message);
        throw error;
      });
      const rows = Object.entries(outcome.removed)
        .filter(([, n]) => n > 0)
        .map(([table, n]) => `${table} ${n}`)
        .join(', ');
      io.out(`deleted the user (${rows}); ${outcome.auditErased} audit rows no longer name it; audit seq ${outcome.audit.seq} records the deletion under ref ${outcome.audit.userRef}\n`);
      if (!outcome.walTruncated) io.err('keel-relay: warning: the WAL could not be emptied now; it is at the next checkpoint\n');
    } finally {
      await store.close();
    }
  });
