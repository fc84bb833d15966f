import { createHash, createHmac } from 'node:crypto';
import type { AuditDetail, AuditRecord } from '../storage/relay-store.js';

/** `prev_hash` of the first audit row. */
export const GENESIS_HASH = '0'.repeat(64);

/** JSON with object keys sorted, so one detail has exactly one text (and one hash). */
export const canonicalDetail = (detail: AuditDetail): string => {
  const sorted: Record<string, string | number | boolean | null> = {};
  for (const key of Object.keys(detail).sort()) sorted[key] = detail[key] ?? null;
  return JSON.stringify(sorted);
};

/** The fields a row's hash covers, in a fixed order (`userId` is not one of them: see below). */
export type AuditFields = Omit<AuditRecord, 'prevHash' | 'hash' | 'userId'>;

/**
 * The keyed pseudonym of a user id the chain covers: hex HMAC-SHA256 under the relay's audit key
 * (kept in the database's meta). Hashing the pseudonym instead of the id lets `user delete` erase
 * the plain id from every row that named the user while every hash still verifies; someone who
 * holds the key and a candidate id can still tell which rows were that user's.
 */
export const auditUserRef = (key: Uint8Array, userId: string): string => createHmac('sha256', key).update(userId).digest('hex');

/**
 * hash = hex SHA-256 over `prev_hash`, a newline, and the canonical row: the JSON array
 * [2, seq, at, actor, op, user-ref, outcome, detail-text] (2: the row format). Changing,
 * removing or reordering any row changes every hash after it.
 */
export const hashAuditRow = (prevHash: string, row: AuditFields): string =>
  createHash('sha256')
    .update(`${prevHash}\n`)
    .update(JSON.stringify([2, row.seq, row.at, row.actor, row.op, row.userRef, row.outcome, row.detail]))
    .digest('hex');

/**
 * The row format before user refs (schema 10 and older), which hashed the plain user id. Only
 * the migration that re-links an old trail into the current format reads it.
 */
export const hashLegacyAuditRow = (prevHash: string, row: AuditFields & { readonly userId: string | null }): string =>
  createHash('sha256')
    .update(`${prevHash}\n`)
    .update(JSON.stringify([row.seq, row.at, row.actor, row.op, row.userId, row.outcome, row.detail]))
    .digest('hex');

/** What kind of damage the first broken row shows. */
export type AuditBreakKind =
  /** A seq number is skipped: rows were deleted. */
  | 'missing'
  /** The row's content does not hash to its stored hash: it was edited. */
  | 'altered'
  /** The row follows another row than the one before it, and that row is later in the trail: rows were swapped or reordered. */
  | 'reordered'
  /** The row follows a row that is nowhere in the trail: the row before was edited and rehashed, or rows were deleted and the rest renumbered. */
  | 'unlinked';

/** Where and why a chain breaks. */
export interface AuditBreak {
  readonly seq: number;
  readonly kind: AuditBreakKind;
  readonly reason: string;
}

/** Finds the seq of the row whose hash is `hash`; lets the verifier tell a swap from an edit. */
export type AuditHashLookup = (hash: string) => number | undefined;

/**
 * Checks rows one at a time, in seq order, so a large trail is verified in pages. The first
 * row must be seq 1 on the genesis hash; each next one seq + 1 on the previous hash. At the
 * first break, `lookup` (one indexed or scanning query, run once) says whether the row's
 * predecessor exists elsewhere in the trail, which separates reordered rows from edited ones.
 */
export const createAuditVerifier = (lookup?: AuditHashLookup) => {
  let expectedSeq = 1;
  let prevHash = GENESIS_HASH;
  let count = 0;
  const diagnoseLink = (row: AuditRecord): AuditBreak => {
    const at = lookup?.(row.prevHash);
    if (at !== undefined && at !== row.seq - 1) {
      return {
        seq: row.seq,
        kind: 'reordered',
        reason: `row ${row.seq} follows the row now at seq ${at}, not row ${row.seq - 1}: rows were swapped or reordered`,
      };
    }
    return {
      seq: row.seq,
      kind: 'unlinked',
      reason: `row ${row.seq} does not follow row ${row.seq - 1} (its prev_hash names no row of the trail): row ${row.seq - 1} was edited and its hash recomputed, or rows were deleted and the rest renumbered`,
    };
  };
  return {
    /** Returns the break this row shows, or undefined when it continues the chain. */
    push(row: AuditRecord): AuditBreak | undefined {
      if (row.seq > expectedSeq) {
        const range = row.seq - 1 === expectedSeq ? `row ${expectedSeq} is` : `rows ${expectedSeq}–${row.seq - 1} are`;
        return { seq: expectedSeq, kind: 'missing', reason: `${range} missing: deleted from the trail` };
      }
      if (row.seq !== expectedSeq) return { seq: row.seq, kind: 'reordered', reason: `row ${row.seq} comes where row ${expectedSeq} should` };
      if (row.prevHash !== prevHash) return diagnoseLink(row);
      if (hashAuditRow(row.prevHash, row) !== row.hash) {
        return { seq: row.seq, kind: 'altered', reason: `row ${row.seq} does not match its hash: its content was edited` };
      }
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

export type AuditVerdict = { readonly ok: true; readonly count: number; readonly headHash: string } | ({ readonly ok: false; readonly count: number } & AuditBreak);

/** Verifies a whole chain held in memory; tests and small trails. */
export const verifyAuditRows = (rows: Iterable<AuditRecord>): AuditVerdict => {
  const list = [...rows];
  const verifier = createAuditVerifier((hash) => list.find((r) => r.hash === hash)?.seq);
  for (const row of list) {
    const broken = verifier.push(row);
    if (broken) return { ok: false, count: verifier.count, ...broken };
  }
  return { ok: true, count: verifier.count, headHash: verifier.headHash };
};
