import * as z from 'zod';
import { createSignupToken } from '../auth/signup-tokens.js';
import { type Command, parseCommand, runCommand } from './command.js';
import { databasePath, openExistingStore } from './database.js';

const USAGE = 'keel-relay signup-token create [--expires <n>(m|h|d)] [--db <file>]   (default 7d, at most 365d)';

const UNIT_MS = { m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const MAX_MS = 365 * UNIT_MS.d;

/** `30m`, `12h`, `7d`: a whole number and a unit, at most a year. */
export const DurationSchema = z
  .string()
  .regex(/^[1-9][0-9]{0,5}[mhd]$/, 'a duration is a whole number and m, h or d (e.g. 30m, 12h, 7d)')
  .transform((text) => Number(text.slice(0, -1)) * UNIT_MS[text.slice(-1) as keyof typeof UNIT_MS])
  .refine((ms) => ms <= MAX_MS, 'a signup token lives at most 365 days');

const ArgsSchema = z.object({
  positionals: z.tuple([z.literal('create')], { error: 'the command is "signup-token create"' }),
  expires: z.string().default('7d').pipe(DurationSchema),
  db: z.string().min(1).optional(),
});

/**
 * `signup-token create`: a token for one new user of a relay with `--registration token`. The
 * database keeps its SHA-256 only; the token is printed once. Safe while the relay serves: the
 * relay reads tokens from the database when a device presents one.
 */
export const signupTokenCommand: Command = (argv, io) =>
  runCommand(USAGE, io, async () => {
    const args = parseCommand(argv, { expires: { type: 'string' }, db: { type: 'string' } }, ArgsSchema);
    const store = openExistingStore(databasePath(args.db, io.env));
    try {
      const { token, expiresAt } = await createSignupToken(store, io.now(), args.expires);
      io.out(`${token}\n`);
      io.err(`keel-relay: signup token valid until ${new Date(expiresAt).toISOString()}, for one new user\n`);
    } finally {
      await store.close();
    }
  });
