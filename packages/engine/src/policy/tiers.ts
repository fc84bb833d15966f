import * as z from 'zod';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';

// This file must not import protocol/frames.ts: frames.ts imports the tier schemas from here.

export const TierNameSchema = z.enum(['trial', 'basic', 'grace_period', 'premium']);
export type TierName = z.infer<typeof TierNameSchema>;

/** Every tier, in ascending order of what the user pays for. */
export const TIER_NAMES: readonly TierName[] = TierNameSchema.options;

/** A byte count that is either a positive limit or `null`: no limit. */
const OptionalByteLimitSchema = z.number().int().positive().nullable();

/**
 * What one subscription tier allows. Crisis lanes (priority 9 and 10) ignore every number
 * here (docs/design.md, "Rules that no tier changes").
 */
export const TierPolicySchema = z.strictObject({
  /** Cap on the effective priority of non-crisis work. */
  tierPriority: z.number().int().min(1).max(10),
  /** Non-crisis batches in flight to the relay at once. */
  maxConcurrent: z.number().int().min(1),
  /** How long a document's writes coalesce before they are sent (ms); 0 = realtime. */
  batchWindowMs: z.number().int().min(0),
  /** Upload bandwidth for non-crisis work (bytes/s); `null` = unlimited. */
  bandwidthBytesPerSec: OptionalByteLimitSchema,
  /** Largest single sync (bytes); `null` = unlimited. */
  maxSyncBytes: OptionalByteLimitSchema,
  /** Bytes per day; `null` = unlimited. */
  dailyBytes: OptionalByteLimitSchema,
  /** Entries the offline queue holds before it compacts, defers or refuses. */
  offlineQueueLimit: z.number().int().min(1),
  realtime: z.boolean(),
  /** `false`: the relay backs updates up but does not fan them out to other devices. */
  crossDevice: z.boolean(),
  /** `manual`: remote updates are staged until the app accepts them. */
  conflictResolution: z.enum(['manual', 'automatic']),
  /** An active therapeutic session may be escalated to priority 8. */
  escalation: z.boolean(),
  /**
   * Promised response time of the relay (ms): a sync operation's time from its frame reaching
   * the relay to its commit and acknowledgment. Measured on every operation, counted against the
   * tier on `/metrics` (`keel_tier_response_violations_total`) and reported as SLA attainment per
   * tier by `keel-relay audit report`. (The matrix once also held an uptime percentage and an
   * error tolerance; a relay cannot attest to its own downtime and read neither, so they went:
   * uptime is for an external monitor polling `/readyz`.)
   */
  maxResponseMs: z.number().int().positive(),
});
export type TierPolicy = z.infer<typeof TierPolicySchema>;

const KiB = 1024;
const MiB = 1024 * 1024;

/** The defaults of docs/design.md's "Subscription tiers" table, number for number (KiB = 1024 B). */
export const DEFAULT_TIERS: Readonly<Record<TierName, TierPolicy>> = Object.freeze({
  trial: Object.freeze({
    tierPriority: 3,
    maxConcurrent: 2,
    batchWindowMs: 30_000,
    bandwidthBytesPerSec: 50 * KiB,
    maxSyncBytes: 10 * MiB,
    dailyBytes: 100 * MiB,
    offlineQueueLimit: 20,
    realtime: false,
    crossDevice: false,
    conflictResolution: 'manual',
    escalation: false,
    maxResponseMs: 30_000,
  }),
  basic: Object.freeze({
    tierPriority: 4,
    maxConcurrent: 3,
    batchWindowMs: 5_000,
    bandwidthBytesPerSec: 200 * KiB,
    maxSyncBytes: 50 * MiB,
    dailyBytes: 500 * MiB,
    offlineQueueLimit: 50,
    realtime: false,
    crossDevice: true,
    conflictResolution: 'automatic',
    escalation: false,
    maxResponseMs: 5_000,
  }),
  grace_period: Object.freeze({
    tierPriority: 5,
    maxConcurrent: 5,
    batchWindowMs: 1_000,
    bandwidthBytesPerSec: 100 * KiB,
    maxSyncBytes: 25 * MiB,
    dailyBytes: 250 * MiB,
    offlineQueueLimit: 75,
    realtime: false,
    crossDevice: true,
    conflictResolution: 'automatic',
    escalation: false,
    maxResponseMs: 2_000,
  }),
  premium: Object.freeze({
    tierPriority: 7,
    maxConcurrent: 10,
    batchWindowMs: 0,
    bandwidthBytesPerSec: null,
    maxSyncBytes: null,
    dailyBytes: null,
    offlineQueueLimit: 200,
    realtime: true,
    crossDevice: true,
    conflictResolution: 'automatic',
    escalation: true,
    maxResponseMs: 500,
  }),
});

/** A complete tier matrix: every tier with every field. */
export const TierMatrixSchema = z.strictObject({
  trial: TierPolicySchema,
  basic: TierPolicySchema,
  grace_period: TierPolicySchema,
  premium: TierPolicySchema,
});
export type TierMatrix = z.infer<typeof TierMatrixSchema>;

const TierPolicyOverrideSchema = TierPolicySchema.partial();

/**
 * An operator's config: per tier, the fields that differ from docs/design.md's defaults. Strict, so
 * a misspelt tier or field is an error rather than a silently ignored setting.
 */
export const TierOverridesSchema = z.strictObject({
  trial: TierPolicyOverrideSchema.optional(),
  basic: TierPolicyOverrideSchema.optional(),
  grace_period: TierPolicyOverrideSchema.optional(),
  premium: TierPolicyOverrideSchema.optional(),
});
export type TierOverrides = z.infer<typeof TierOverridesSchema>;

/** Fields older configs may still carry: named as removed, not as typos. */
const REMOVED_FIELDS = new Set(['uptime', 'errorTolerancePerHour']);

/** Names every failing path, so an operator can find the line in their config. */
const describeConfigIssues = (error: z.ZodError): string => {
  const parts: string[] = [];
  for (const issue of error.issues) {
    const at = issue.path.map(String).join('.');
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        parts.push(`${at ? `${at}.` : ''}${key}: ${at && REMOVED_FIELDS.has(key) ? 'removed (a relay cannot attest to it; monitor /readyz from outside)' : `unknown ${at ? 'field' : 'tier'}`}`);
      }
    } else {
      parts.push(`${at || '(root)'}: ${issue.message}`);
    }
  }
  const shown = parts.slice(0, 5).join('; ');
  return parts.length > 5 ? `${shown} (+${parts.length - 5} more)` : shown;
};

/**
 * Merges an operator's overrides (unvalidated, e.g. a parsed config file; `undefined` or `null` = none)
 * onto {@link DEFAULT_TIERS} and validates the result. Bad input is a `SCHEMA` error naming
 * the path, e.g. `trial.batchWindowMs`.
 */
export const resolveTierMatrix = (overrides: unknown): Result<TierMatrix> => {
  const parsed = TierOverridesSchema.safeParse(overrides ?? {});
  if (!parsed.success) return err(ErrorCode.SCHEMA, `invalid tier overrides: ${describeConfigIssues(parsed.error)}`);
  const merged: Record<string, TierPolicy> = {};
  for (const name of TIER_NAMES) {
    const patch = parsed.data[name] ?? {};
    // An explicit `undefined` (possible from JS callers, never from JSON) keeps the default.
    const defined = Object.fromEntries(Object.entries(patch).filter(([, value]) => value !== undefined));
    merged[name] = { ...DEFAULT_TIERS[name], ...defined };
  }
  const matrix = TierMatrixSchema.safeParse(merged);
  if (!matrix.success) return err(ErrorCode.SCHEMA, `invalid tier matrix: ${describeConfigIssues(matrix.error)}`);
  return ok(matrix.data);
};
