import * as z from 'zod';
import { type AuditVerdict, createAuditVerifier } from '../audit/audit-chain.js';
import type { SqliteRelayStore } from '../storage/sqlite-store.js';
import { type Command, CommandFailed, parseCommand, runCommand } from './command.js';
import { databasePath, openExistingStore } from './database.js';

const USAGE = 'keel-relay audit verify --db <file>';
const PAGE = 1_000;

const ArgsSchema = z.object({
  positionals: z.tuple([z.literal('verify', { error: 'the audit command is "audit verify"' })], { error: 'the audit command is "audit verify"' }),
  db: z.string().min(1).optional(),
});

/**
 * Recomputes the hash chain a page at a time (memory stays flat on a large trail) and stops at
 * the first break, naming its seq and kind: a missing row, an edited one, rows out of order, or a
 * row that follows nothing in the trail.
 */
export const verifyAuditTrail = async (store: SqliteRelayStore): Promise<AuditVerdict> => {
  const verifier = createAuditVerifier((hash) => store.auditSeqOfHash(hash));
  let after = 0;
  for (;;) {
    const page = await store.readAudit(after, PAGE);
    if (page.length === 0) return { ok: true, count: verifier.count, headHash: verifier.headHash };
    for (const row of page) {
      const broken = verifier.push(row);
      if (broken) return { ok: false, count: verifier.count, ...broken };
    }
    after = page[page.length - 1]!.seq;
  }
};

/** One line for the operator: OK with the head hash to note down, or where and how it breaks. */
export const describeVerdict = (verdict: AuditVerdict): string =>
  verdict.ok
    ? `audit trail OK: ${verdict.count} rows, head ${verdict.headHash}`
    : `audit trail BROKEN at seq ${verdict.seq} (${verdict.kind}): ${verdict.reason}; ${verdict.count} rows before it verified`;

/** `audit verify --db <file>`: read-only; exit 0 when intact, 1 at the first broken row. */
export const auditVerifyCommand: Command = (argv, io) =>
  runCommand(USAGE, io, async () => {
    const args = parseCommand(argv, { db: { type: 'string' } }, ArgsSchema);
    const store = openExistingStore(databasePath(args.db, io.env), { readonly: true });
    try {
      const verdict = await verifyAuditTrail(store);
      io.out(`${describeVerdict(verdict)}\n`);
      if (!verdict.ok) throw new CommandFailed('the audit trail does not verify');
    } finally {
      await store.close();
    }
  });
