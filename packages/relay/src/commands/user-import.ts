import { closeSync, openSync, readSync } from 'node:fs';
import * as z from 'zod';
import { UserDataError } from '../storage/user-data.js';
import { type Command, CommandFailed, parseCommand, runCommand } from './command.js';
import { databasePath, openStore } from './database.js';

const USAGE = 'keel-relay user import --in <file> [--db <file>]   (relay stopped)';

const ArgsSchema = z.object({
  positionals: z.tuple([z.literal('import')], { error: 'user import takes no other argument' }),
  in: z.string({ error: 'give the archive to read with --in <file>' }).min(1),
  db: z.string().min(1).optional(),
});

/** A line longer than this is not one an export writes (a row holds at most a frame's ciphertext). */
const MAX_LINE = 128 * 1024 * 1024;

/** The file's lines, read in 1 MiB chunks: an export of a large log is never held whole in memory. */
function* readLines(path: string): Generator<string> {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    throw new CommandFailed(`cannot read ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  try {
    const chunk = Buffer.alloc(1 << 20);
    let carry = Buffer.alloc(0);
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      let data = Buffer.concat([carry, chunk.subarray(0, n)]);
      let nl: number;
      while ((nl = data.indexOf(10)) !== -1) {
        yield data.subarray(0, nl).toString('utf8');
        data = data.subarray(nl + 1);
      }
      if (data.length > MAX_LINE) throw new CommandFailed(`${path}: a line over ${MAX_LINE} bytes is not an export's`);
      carry = Buffer.from(data);
    }
    if (carry.length > 0) yield carry.toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/**
 * `user import`: restores an export into a relay database (a fresh one is created, taking the
 * export's relay id), all in one transaction. Runs only with no relay serving the file: the
 * relay keeps per-user state in memory that rows appearing under it would contradict.
 */
export const userImportCommand: Command = (argv, io) =>
  runCommand(USAGE, io, async () => {
    const args = parseCommand(argv, { in: { type: 'string' }, db: { type: 'string' } }, ArgsSchema);
    const store = openStore(databasePath(args.db, io.env));
    try {
      const outcome = await (async () => {
        store.claimExclusive();
        return store.importUser(readLines(args.in), io.now());
      })().catch((error: unknown) => {
        if (error instanceof UserDataError) throw new CommandFailed(error.message);
        throw error;
      });
      const rows = Object.entries(outcome.rows)
        .map(([table, n]) => `${table} ${n}`)
        .join(', ');
      io.out(`imported user ${outcome.user} (${rows})\n`);
      if (!outcome.relayIdMatches) {
        io.err(`keel-relay: warning: the export comes from relay id ${outcome.relayId}; this database keeps another, and the user's devices will refuse it (RELAY_MISMATCH)\n`);
      }
    } finally {
      await store.close();
    }
  });
