import { type DocClass, DocClassSchema } from '@keel/engine';
import * as z from 'zod';

/** What a device remembers about one document besides its content. */
export const DocMetaSchema = z.strictObject({
  v: z.literal(1),
  class: DocClassSchema,
  name: z.string(),
  /** This device's last envelope counter for the document. */
  counter: z.number().int().min(0),
  /** Every seq ≤ lastSeq has been received (or was ours): catch-up resumes after it. */
  lastSeq: z.number().int().min(0),
  /** Seqs above lastSeq already received, out of order. */
  ahead: z.array(z.number().int().min(1)),
  /**
   * Seqs above lastSeq the relay keeps from this device (no cross-device sync on the tier).
   * They count as seen for "synced" but not for resuming, so they arrive once the tier allows.
   */
  withheld: z.array(z.number().int().min(1)).default([]),
  /** Every seq up to this one is withheld (pruned into a snapshot this device may not read yet). */
  withheldThrough: z.number().int().min(0).default(0),
  /** Last counter applied per author device: the next one must be exactly one more. */
  authors: z.record(z.string(), z.number().int().min(0)),
  /**
   * Seq at which each author's last applied counter was received (a snapshot's base when it came
   * from one): a counter gap of that author rewinds the received position here, not further.
   */
  authorSeq: z.record(z.string(), z.number().int().min(0)).default({}),
  /** Next index for the local update log and for pending (unsealed) local updates. */
  logNext: z.number().int().min(0),
  /** Highest lane of any entry this device sent or applied: a snapshot inherits it (crisis content stays crisis). */
  maxLane: z.number().int().min(1).max(10).default(1),
  /** Highest seq covered by a snapshot this device uploaded or loaded. */
  snapshotBase: z.number().int().min(0).default(0),
  /** This device's last snapshot number for the document (a counter space of its own). */
  snapshotCounter: z.number().int().min(0).default(0),
  /**
   * Authors this device learned are revoked (or cut off), each with the last counter applied
   * from it then: nothing later of theirs is applied to this document (see DocSync.freezeAuthors).
   */
  frozen: z.record(z.string(), z.number().int().min(0)).default({}),
  /** With external document state: the state vector of everything Keel has recorded (base64url). */
  knownSV: z.string().optional(),
  logBase: z.number().int().min(0),
  pendingNext: z.number().int().min(0),
});
export type DocMeta = z.infer<typeof DocMetaSchema>;

export const newDocMeta = (docClass: DocClass, name: string): DocMeta => ({
  v: 1,
  class: docClass,
  name,
  counter: 0,
  lastSeq: 0,
  ahead: [],
  withheld: [],
  withheldThrough: 0,
  authors: {},
  authorSeq: {},
  frozen: {},
  maxLane: 1,
  snapshotBase: 0,
  snapshotCounter: 0,
  logNext: 0,
  logBase: 0,
  pendingNext: 0,
});

/**
 * Seqs kept per document above `lastSeq`, received or withheld. A relay can name any seq, so both
 * lists are bounded; forgetting a received one costs a second download of it, forgetting a
 * withheld one only the "synced" accounting — never content.
 */
export const MAX_KNOWN_SEQS = 4096;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
export const encodeJson = (value: unknown): Uint8Array => encoder.encode(JSON.stringify(value));
export const decodeJson = (bytes: Uint8Array): unknown => JSON.parse(decoder.decode(bytes));

/**
 * Records that `seq` is known here and advances `lastSeq` over every contiguous known seq.
 * Delivery can reorder across priority lanes; only a contiguous prefix is safe to resume from.
 */
export const markSeq = (meta: DocMeta, seq: number): void => {
  if (seq <= meta.lastSeq || meta.ahead.includes(seq)) return;
  meta.withheld = meta.withheld.filter((s) => s !== seq);
  meta.ahead.push(seq);
  meta.ahead.sort((a, b) => a - b);
  while (meta.ahead.length > 0 && meta.ahead[0] === meta.lastSeq + 1) {
    meta.lastSeq = meta.ahead.shift()!;
  }
  // The highest are dropped: they are the furthest from joining the contiguous prefix.
  if (meta.ahead.length > MAX_KNOWN_SEQS) meta.ahead.length = MAX_KNOWN_SEQS;
};

/**
 * Moves the received position back to `seq` (never forward) and forgets what was received out of
 * order above it, so the next catch-up from `lastSeq` fetches all of it again. What was applied
 * stays applied; what comes again is a duplicate and only marks its seq.
 */
export const rewindTo = (meta: DocMeta, seq: number): void => {
  meta.lastSeq = Math.min(meta.lastSeq, seq);
  meta.ahead = [];
};

/** Records seqs the relay withheld; they stop "synced" from waiting on them. */
export const markWithheld = (meta: DocMeta, seqs: readonly number[]): void => {
  for (const seq of seqs) {
    if (seq > meta.lastSeq && !meta.ahead.includes(seq) && !meta.withheld.includes(seq)) meta.withheld.push(seq);
  }
  meta.withheld.sort((a, b) => a - b);
  // Past the cap the oldest are forgotten: the device then waits on them for "synced" in vain
  // until they arrive (the tier allows them) or a catch-up covers them.
  if (meta.withheld.length > MAX_KNOWN_SEQS) meta.withheld.splice(0, meta.withheld.length - MAX_KNOWN_SEQS);
};

/** Highest seq up to which every seq is received or known to be withheld. */
export const seenThrough = (meta: DocMeta): number => {
  const known = new Set([...meta.ahead, ...meta.withheld]);
  let seq = Math.max(meta.lastSeq, meta.withheldThrough);
  while (known.has(seq + 1)) seq++;
  return seq;
};
