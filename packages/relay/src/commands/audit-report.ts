import { readFileSync } from 'node:fs';
import { DEFAULT_TIERS, type TierMatrix, resolveTierMatrix } from '@keel/engine';
import * as z from 'zod';
import { type Command, CommandFailed, UsageError, parseCommand, runCommand } from './command.js';
import { type AuditReport, createAuditReport } from './audit-report-summary.js';
import { formatAuditReport } from './audit-report-format.js';
import { databasePath, openExistingStore } from './database.js';
import type { SqliteRelayStore } from '../storage/sqlite-store.js';

const USAGE = 'keel-relay audit report --from <ISO date|ms> --to <ISO date|ms> [--db <file>] [--tiers <file>] [--json]';
const PAGE = 1_000;

/** A moment as an operator writes it: milliseconds since the epoch, or an ISO 8601 date or date-time. */
const Moment = z
  .string()
  .trim()
  .min(1)
  .transform((text, ctx) => {
    const ms = /^\d+$/.test(text) ? Number(text) : /^\d{4}-\d{2}-\d{2}/.test(text) ? Date.parse(text) : Number.NaN;
    if (!Number.isSafeInteger(ms)) {
      ctx.addIssue({ code: 'custom', message: `"${text}" is not a date: give an ISO date (2026-11-01, 2026-11-01T12:00:00Z) or ms since the epoch` });
      return z.NEVER;
    }
    return ms;
  });

const ArgsSchema = z
  .object({
    positionals: z.tuple([z.literal('report')], { error: 'the command is "audit report"' }),
    from: Moment,
    to: Moment,
    db: z.string().min(1).optional(),
    tiers: z.string().min(1).optional(),
    json: z.boolean().optional(),
  })
  .refine((a) => a.from < a.to, { message: '--from must be before --to', path: ['from'] });

/** The tier matrix in force: `--tiers` like `keel-relay serve`, else docs/design.md's defaults. */
const readTiers = (path: string | undefined): TierMatrix => {
  if (path === undefined) return DEFAULT_TIERS;
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new UsageError(`cannot read tier overrides ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  const matrix = resolveTierMatrix(json);
  if (!matrix.ok) throw new UsageError(`invalid tier overrides in ${path}: ${matrix.error.message}`);
  return matrix.value;
};

/** Reads the window `from <= at < to` a page at a time (keyset on the time index) into the report. */
export const buildAuditReport = async (store: SqliteRelayStore, tiers: TierMatrix, from: number, to: number): Promise<AuditReport> => {
  const report = createAuditReport(tiers, { from, to });
  let after: { at: number; seq: number } | undefined;
  for (;;) {
    const page = await store.readAuditWindow(from, to, after, PAGE);
    for (const row of page) report.push(row);
    if (page.length < PAGE) return report.result();
    const last = page[page.length - 1]!;
    after = { at: last.at, seq: last.seq };
  }
};

/** `audit report`: read-only; a compliance summary of a window of the audit trail. */
export const auditReportCommand: Command = (argv, io) =>
  runCommand(USAGE, io, async () => {
    const args = parseCommand(argv, { from: { type: 'string' }, to: { type: 'string' }, db: { type: 'string' }, tiers: { type: 'string' }, json: { type: 'boolean' } }, ArgsSchema);
    const tiers = readTiers(args.tiers);
    const store = openExistingStore(databasePath(args.db, io.env), { readonly: true });
    try {
      const report = await buildAuditReport(store, tiers, args.from, args.to);
      io.out(args.json ? `${JSON.stringify(report, null, 2)}\n` : formatAuditReport(report));
    } catch (error) {
      throw error instanceof UsageError ? error : new CommandFailed(`cannot read the audit trail: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      await store.close();
    }
  });
