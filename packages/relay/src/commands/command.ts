import { parseArgs } from 'node:util';
import { describeIssues } from '@keel/engine';
import type * as z from 'zod';

/** Exit statuses of every operator command: 0 done, 1 refused or failed, 64 (EX_USAGE) a usage error. */
export const Exit = { OK: 0, FAILED: 1, USAGE: 64 } as const;
export type ExitStatus = (typeof Exit)[keyof typeof Exit];

/** What a command may touch of its process: output, environment, clock. Injected, so tests can run commands in-process. */
export interface CommandIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly now: () => number;
}

export type Command = (argv: readonly string[], io: CommandIo) => Promise<ExitStatus>;

/** A mistake in how the command was called: exit 64 with the command's usage. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The command ran and was refused or failed: exit 1 with this sentence. */
export class CommandFailed extends Error {
  override name = 'CommandFailed';
}

type FlagSpec = Readonly<Record<string, { readonly type: 'string' | 'boolean' }>>;

/**
 * Parses argv strictly (unknown flags are usage errors), then validates positionals and flags
 * together with `schema`, whose issues become one readable usage error.
 */
export const parseCommand = <S extends z.ZodType>(argv: readonly string[], flags: FlagSpec, schema: S): z.infer<S> => {
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: flags, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
  const result = schema.safeParse({ ...parsed.values, positionals: parsed.positionals });
  if (!result.success) throw new UsageError(describeIssues(result.error));
  return result.data;
};

/** Runs a command body and maps its errors to exit statuses and one line on stderr. */
export const runCommand = async (usage: string, io: CommandIo, body: () => Promise<void>): Promise<ExitStatus> => {
  try {
    await body();
    return Exit.OK;
  } catch (error) {
    if (error instanceof UsageError) {
      io.err(`keel-relay: ${error.message}\n\nusage: ${usage}\n`);
      return Exit.USAGE;
    }
    io.err(`keel-relay: ${error instanceof Error ? error.message : String(error)}\n`);
    return Exit.FAILED;
  }
};
