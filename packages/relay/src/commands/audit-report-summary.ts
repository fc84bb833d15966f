import { Priority, type TierMatrix, TierNameSchema } from '@keel/engine';
import * as z from 'zod';
import { SyncAuditOp } from '../observe/sync-audit.js';
import type { AuditRecord } from '../storage/relay-store.js';

/** Ops of operator commands on a user's data (docs/data-rights.md). */
const DATA_RIGHTS_OPS = new Set(['user.export', 'user.import', 'user.delete']);

/** Lane number → its priority's name (`10 crisis_emergency`). */
const LANE_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(Priority).map(([name, lane]) => [lane, name.toLowerCase()]));

// The database is input like any other: each detail the report reads is checked, and a row that
// does not match is counted as unreadable instead of crashing the report or being guessed at.
const CommitDetail = z.object({ lane: z.number().int(), envelopes: z.number().int().nonnegative(), bytes: z.number().nonnegative(), latencyMs: z.number().nonnegative(), tier: TierNameSchema });
const CountDetail = z.object({ count: z.number().int().positive() });
const ReceiptDetail = z.object({ latencyMs: z.number().nonnegative() });
const LaneDetail = z.object({ lane: z.number().int() });

/** Counts of a latency at 1 ms resolution: percentiles without holding every value. */
const createHistogram = () => {
  const counts = new Map<number, number>();
  let n = 0;
  let max = 0;
  return {
    add(ms: number) {
      const bucket = Math.ceil(ms);
      counts.set(bucket, (counts.get(bucket) ?? 0) + 1);
      n++;
      max = Math.max(max, ms);
    },
    /** Nearest-rank percentile, rounded up to the ms; null without values. */
    percentile(p: number): number | null {
      if (n === 0) return null;
      const rank = Math.max(1, Math.ceil((p / 100) * n));
      let seen = 0;
      for (const bucket of [...counts.keys()].sort((a, b) => a - b)) {
        seen += counts.get(bucket)!;
        if (seen >= rank) return bucket;
      }
      return max;
    },
    get n() {
      return n;
    },
    get max() {
      return n === 0 ? null : max;
    },
  };
};

export interface AuditReport {
  readonly from: string;
  readonly to: string;
  readonly rows: number;
  /** Rows whose detail did not have the shape their op writes. */
  readonly unreadable: number;
  readonly crisis: {
    readonly receipts: number;
    readonly p50Ms: number | null;
    readonly p99Ms: number | null;
    readonly maxMs: number | null;
    readonly breaches: number;
    readonly missing: number;
  };
  /** Per tier: sync operations, how many committed within the tier's maxResponseMs, and the share. */
  readonly slaByTier: Readonly<Record<string, { readonly maxResponseMs: number; readonly operations: number; readonly within: number; readonly attainment: number | null }>>;
  /** Per lane (its priority's name): sync operations, envelopes and ciphertext bytes. */
  readonly lanes: readonly { readonly lane: number; readonly class: string; readonly operations: number; readonly envelopes: number; readonly bytes: number }[];
  readonly authFailures: Readonly<Record<string, number>>;
  /** Envelopes refused or deferred, by code. */
  readonly refusals: Readonly<Record<string, number>>;
  /** Bad frames (schema or timing), by code. */
  readonly badFrames: Readonly<Record<string, number>>;
  readonly anomalies: { readonly crisisVolume: number; readonly laneReports: number };
  readonly devices: { readonly logins: number; readonly registered: number; readonly revoked: number };
  readonly pairing: Readonly<Record<string, number>>;
  readonly dataRights: Readonly<Record<string, number>>;
  /** Audit rows the relay could not write and recorded as a gap. */
  readonly droppedRows: number;
  /** Every other op in the window (tier changes, payments, recovery resets…), by op. */
  readonly otherOps: Readonly<Record<string, number>>;
}

const bump = (into: Record<string, number>, key: string, by = 1): void => {
  into[key] = (into[key] ?? 0) + by;
};

/** Sorted by key, so the report reads the same every time. */
const sorted = (rec: Record<string, number>): Record<string, number> => Object.fromEntries(Object.entries(rec).sort(([a], [b]) => a.localeCompare(b)));

/**
 * The compliance report over a window of the audit trail, built one row at a time (the command
 * reads the window in pages): memory grows with the number of distinct codes, lanes and latency
 * milliseconds, never with the number of rows.
 */
export const createAuditReport = (tiers: TierMatrix, window: { readonly from: number; readonly to: number }) => {
  let rows = 0;
  let unreadable = 0;
  const crisisLatency = createHistogram();
  let breaches = 0;
  let missing = 0;
  const sla = new Map<string, { operations: number; within: number }>();
  const lanes = new Map<number, { operations: number; envelopes: number; bytes: number }>();
  const authFailures: Record<string, number> = {};
  const refusals: Record<string, number> = {};
  const badFrames: Record<string, number> = {};
  const pairing: Record<string, number> = {};
  const dataRights: Record<string, number> = {};
  const otherOps: Record<string, number> = {};
  const anomalies = { crisisVolume: 0, laneReports: 0 };
  const devices = { logins: 0, registered: 0, revoked: 0 };
  let droppedRows = 0;

  const detailOf = <S extends z.ZodType>(row: AuditRecord, schema: S): z.infer<S> | undefined => {
    let json: unknown;
    try {
      json = JSON.parse(row.detail);
    } catch {
      json = undefined;
    }
    const parsed = schema.safeParse(json);
    if (parsed.success) return parsed.data;
    unreadable++;
    return undefined;
  };
  /** A counted row's count (aggregated ops), or undefined when unreadable. */
  const countOf = (row: AuditRecord): number | undefined => detailOf(row, CountDetail)?.count;

  return {
    push(row: AuditRecord): void {
      rows++;
      switch (row.op) {
        case SyncAuditOp.commit: {
          const d = detailOf(row, CommitDetail);
          if (!d) return;
          const tier = sla.get(d.tier) ?? { operations: 0, within: 0 };
          tier.operations++;
          if (d.latencyMs <= tiers[d.tier].maxResponseMs) tier.within++;
          sla.set(d.tier, tier);
          const lane = lanes.get(d.lane) ?? { operations: 0, envelopes: 0, bytes: 0 };
          lane.operations++;
          lane.envelopes += d.envelopes;
          lane.bytes += d.bytes;
          lanes.set(d.lane, lane);
          return;
        }
        case SyncAuditOp.crisisReceipt: {
          const d = detailOf(row, ReceiptDetail);
          if (!d) return;
          crisisLatency.add(d.latencyMs);
          if (row.outcome === 'breached') breaches++;
          return;
        }
        case SyncAuditOp.crisisMissing:
          missing++;
          return;
        case SyncAuditOp.crisisAnomaly:
          anomalies.crisisVolume++;
          return;
        case SyncAuditOp.laneReport:
          if (detailOf(row, LaneDetail)) anomalies.laneReports++;
          return;
        case SyncAuditOp.refused: {
          const n = countOf(row);
          if (n !== undefined) bump(refusals, row.outcome, n);
          return;
        }
        case SyncAuditOp.badFrames: {
          const n = countOf(row);
          if (n !== undefined) bump(badFrames, row.outcome, n);
          return;
        }
        case SyncAuditOp.authFailed: {
          const n = countOf(row);
          if (n !== undefined) bump(authFailures, row.outcome, n);
          return;
        }
        case SyncAuditOp.pairing: {
          const n = countOf(row);
          if (n !== undefined) bump(pairing, row.outcome, n);
          return;
        }
        case SyncAuditOp.login:
          devices.logins++;
          return;
        case SyncAuditOp.deviceRegistered:
          devices.registered++;
          return;
        case SyncAuditOp.deviceRevoked:
          devices.revoked++;
          return;
        case SyncAuditOp.dropped: {
          const n = countOf(row);
          if (n !== undefined) droppedRows += n;
          return;
        }
        default:
          if (DATA_RIGHTS_OPS.has(row.op)) bump(dataRights, `${row.op} ${row.outcome}`);
          else bump(otherOps, row.op);
      }
    },
    result(): AuditReport {
      const slaByTier: Record<string, AuditReport['slaByTier'][string]> = {};
      for (const name of TierNameSchema.options) {
        const s = sla.get(name) ?? { operations: 0, within: 0 };
        slaByTier[name] = { maxResponseMs: tiers[name].maxResponseMs, ...s, attainment: s.operations === 0 ? null : s.within / s.operations };
      }
      return {
        from: new Date(window.from).toISOString(),
        to: new Date(window.to).toISOString(),
        rows,
        unreadable,
        crisis: {
          receipts: crisisLatency.n,
          p50Ms: crisisLatency.percentile(50),
          p99Ms: crisisLatency.percentile(99),
          maxMs: crisisLatency.max,
          breaches,
          missing,
        },
        slaByTier,
        lanes: [...lanes.entries()].sort(([a], [b]) => b - a).map(([lane, l]) => ({ lane, class: LANE_NAMES.get(lane) ?? 'unknown', ...l })),
        authFailures: sorted(authFailures),
        refusals: sorted(refusals),
        badFrames: sorted(badFrames),
        anomalies,
        devices,
        pairing: sorted(pairing),
        dataRights: sorted(dataRights),
        droppedRows,
        otherOps: sorted(otherOps),
      };
    },
  };
};
