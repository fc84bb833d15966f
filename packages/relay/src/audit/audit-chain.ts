import { createHash } from 'node:crypto';
import type { AuditDetail, AuditRecord } from '../storage/relay-store.js';

/** `prev_hash` of the first audit row. */
export const GENESIS_HASH = '0'.repeat(64);

/** JSON with object keys sorted, so one detail has exactly one text (and one hash). */
export const canonicalDetail = (detail: AuditDetail): string => {
  const sorted: Record<string, string | number | boolean | null> = {};
  for (const key of Object.keys(detail).sort()) sorted[key] = detail[key] ?? null;
  return JSON.stringify(sorted);
};

/** The fields a row's hash covers, in a fixed order. */
export type AuditFields = Omit<AuditRecord, 'prevHash' | 'hash'>;

/**
 * hash = hex SHA-256 over `prev_hash`, a newline, and the canonical row: the JSON array
 * [seq, at, actor, op, user, outcome, detail-text]. Changing, removing or reordering any row
 * changes every hash after it.
 */
export const hashAuditRow = (prevHash: string, row: AuditFields): string =>
  createHash('sha256')
    .update(`${prevHash}\n`)
    .update(JSON.stringify([row.seq, row.at, row.actor, row.op, row.userId, row.outcome, row.detail]))
    .digest('hex');

/** Where and why a chain breaks. */
export interface AuditBreak {
  readonly seq: number;
  readonly reason: string;
}

/**
 * Checks rows one at a time, in seq order, so a large trail is verified in pages. The first
 * row must be seq 1 on the genesis hash; each next one seq + 1 on the previous hash.
 */
export const createAuditVerifier = () => {
  let expectedSeq = 1;
  let prevHash = GENESIS_HASH;
  let count = 0;
  return {
    /** Returns the break this row shows, or undefined when it continues the chain. */
    push(row: AuditRecord): AuditBreak | undefined {
      if (row.seq !== expectedSeq) return { seq: row.seq, reason: `expected seq ${expectedSeq} (a row is missing or out of order)` };
      if (row.prevHash !== prevHash) return { seq: row.seq, reason: 'prev_hash does not match the previous row' };
      if (hashAuditRow(row.prevHash, row) !== row.hash) return { seq: row.seq, reason: 'hash does not match the row (the row was altered)' };
      expectedSeq++;
      prevHash = row.hash;
      count++;
      return undefined;
    },
    get count() {
      return count;
    },
    get headHash() {
      return prevHash;
    },
  };
};

/** Verifies a whole chain held in memory; tests and small trails. */
export const verifyAuditRows = (rows: Iterable<AuditRecord>): { ok: true; count: number; headHash: string } | ({ ok: false } & AuditBreak) => {
  const verifier = createAuditVerifier();
  for (const row of rows) {
    const broken = verifier.push(row);
    if (broken) return { ok: false, ...broken };
  }
  return { ok: true, count: verifier.count, headHash: verifier.headHash };
};
