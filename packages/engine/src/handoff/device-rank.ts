import * as z from 'zod';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import { describeIssues } from '../protocol/frames.js';
import { type DeviceId, DeviceIdSchema } from '../protocol/ids.js';
import { SessionIdSchema } from './session.js';

/** Sessions a device can hold; breathing and MBCT are therapeutic (docs/design.md, THERAPEUTIC_ACTIVE). */
export const PresenceSessionKindSchema = z.enum(['breathing', 'mbct', 'assessment']);
export type PresenceSessionKind = z.infer<typeof PresenceSessionKindSchema>;
const THERAPEUTIC_KINDS: ReadonlySet<PresenceSessionKind> = new Set(['breathing', 'mbct']);

/** What one device announces about itself to the user's other devices (inside an encrypted document). */
export const PresenceRecordSchema = z.strictObject({
  device: DeviceIdSchema,
  /** The app is in use on this device (foreground, unlocked). */
  active: z.boolean(),
  /** The device's wall clock when it last announced itself active (or went inactive). */
  lastActiveAt: z.number().finite().min(0).max(8.64e15),
  /** The session this device holds, if any. */
  session: z.strictObject({ sessionId: SessionIdSchema, kind: PresenceSessionKindSchema }).optional(),
  crisisMode: z.boolean(),
  /** The user's designated main device. */
  primary: z.boolean().optional(),
  /** The device through which the subscription was bought (app-store receipts live there). */
  subscriptionHolder: z.boolean().optional(),
});
export type PresenceRecord = z.infer<typeof PresenceRecordSchema>;

/**
 * How long an "active" claim holds without being renewed. A device that crashed or lost power
 * cannot say it went away; after this its claim (and its session's claim) lapses. Devices renew
 * well inside it (the client's heartbeat defaults to a third of it).
 */
export const PRESENCE_STALE_AFTER_MS = 45_000;

export interface RankOptions {
  readonly staleAfterMs?: number;
}

/** Whether a device's "active" claim is current at `now`. */
export const isPresenceLive = (p: PresenceRecord, now: number, staleAfterMs = PRESENCE_STALE_AFTER_MS): boolean =>
  p.active && now - p.lastActiveAt <= staleAfterMs;

/** Whether a device is running a therapeutic session (breathing, MBCT) right now. */
export const hasActiveTherapeuticSession = (p: PresenceRecord, now: number, staleAfterMs = PRESENCE_STALE_AFTER_MS): boolean =>
  p.session !== undefined && THERAPEUTIC_KINDS.has(p.session.kind) && isPresenceLive(p, now, staleAfterMs);

/**
 * The sort key, compared element by element, larger first; the device id (ascending) breaks
 * the last ties, so the order is total. docs/design.md: "an active therapeutic session first, then
 * crisis mode, recent activity, the primary device, the device that holds the subscription".
 * Recent activity orders live devices (the one used last wins — the person moved to it); idle
 * devices all rank below live ones and among themselves by primary, subscription, then recency.
 */
const rankKey = (p: PresenceRecord, now: number, staleAfterMs: number): readonly number[] => {
  const live = isPresenceLive(p, now, staleAfterMs);
  return [
    hasActiveTherapeuticSession(p, now, staleAfterMs) ? 1 : 0,
    p.crisisMode ? 1 : 0,
    live ? 1 : 0,
    live ? p.lastActiveAt : 0,
    p.primary === true ? 1 : 0,
    p.subscriptionHolder === true ? 1 : 0,
    p.lastActiveAt,
  ];
};

const compareBy = (a: readonly number[], b: readonly number[]): number => {
  for (let i = 0; i < a.length; i++) {
    const d = b[i]! - a[i]!;
    if (d !== 0) return d;
  }
  return 0;
};

/**
 * Orders the devices of one user, most entitled first, for when they compete (which one owns a
 * session, whose work goes first). One entry per device: of duplicates the latest
 * `lastActiveAt` counts (equal ones: a fixed pick). Deterministic: the same presences and
 * `now` give the same order on every device, whatever order they arrive in.
 */
export const rankDevices = (presences: readonly PresenceRecord[], now: number, options: RankOptions = {}): PresenceRecord[] => {
  const staleAfterMs = options.staleAfterMs ?? PRESENCE_STALE_AFTER_MS;
  const byDevice = new Map<DeviceId, PresenceRecord>();
  for (const p of presences) {
    const seen = byDevice.get(p.device);
    if (!seen || p.lastActiveAt > seen.lastActiveAt || (p.lastActiveAt === seen.lastActiveAt && JSON.stringify(p) > JSON.stringify(seen))) {
      byDevice.set(p.device, p);
    }
  }
  return [...byDevice.values()]
    .map((p) => ({ p, key: rankKey(p, now, staleAfterMs) }))
    .sort((a, b) => compareBy(a.key, b.key) || (a.p.device < b.p.device ? -1 : a.p.device > b.p.device ? 1 : 0))
    .map(({ p }) => p);
};

/**
 * The device whose session wins when several live devices claim one: the one with an active
 * therapeutic session, then by {@link rankDevices}. `undefined` when no live device holds a session.
 */
export const resolveActiveSession = (
  presences: readonly PresenceRecord[],
  now: number,
  options: RankOptions = {},
): (PresenceRecord & { readonly session: NonNullable<PresenceRecord['session']> }) | undefined => {
  const staleAfterMs = options.staleAfterMs ?? PRESENCE_STALE_AFTER_MS;
  for (const p of rankDevices(presences, now, options)) {
    if (p.session !== undefined && isPresenceLive(p, now, staleAfterMs)) return { ...p, session: p.session };
  }
  return undefined;
};

/** Validates a presence record read from a document (another device wrote it); `SCHEMA` on failure. */
export const parsePresenceRecord = (input: unknown): Result<PresenceRecord> => {
  const parsed = PresenceRecordSchema.safeParse(input);
  return parsed.success ? ok(parsed.data) : err(ErrorCode.SCHEMA, `invalid presence record: ${describeIssues(parsed.error)}`);
};
