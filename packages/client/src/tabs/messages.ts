// What tabs of one device say to each other over their BroadcastChannel, and its validation.
// Another tab may run another version of the app: every message is checked here, once, and a
// message that does not match is dropped and reported, never acted on.
import {
  AssessmentSchema,
  DeviceCertificateSchema,
  DeviceIdSchema,
  DocClassSchema,
  DocIdSchema,
  Priority,
  RelayIdSchema,
  TierStateSchema,
} from '@keel/engine';
import * as z from 'zod';

/** Bumped when a message changes meaning; a tab ignores versions it does not speak. */
export const TAB_PROTOCOL_VERSION = 1;

const bytes = z.custom<Uint8Array>((value) => value instanceof Uint8Array, 'expected a Uint8Array');
const TabIdSchema = z.string().min(1).max(64);
const IdSchema = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
export const DocSpecSchema = z.object({ class: DocClassSchema, name: z.string().max(4096) });

/** Methods a follower calls on the leader. Those marked idempotent are retried on a new leader. */
export const CALLS = {
  flush: { idempotent: true, args: z.tuple([]) },
  whenSynced: { idempotent: true, args: z.tuple([]) },
  setCrisisMode: { idempotent: true, args: z.tuple([z.boolean(), z.string().max(64).optional()]) },
  // A scheduling hint for the device (a breathing session runs): setting it again changes nothing.
  setTherapeuticSession: { idempotent: true, args: z.tuple([z.boolean()]) },
  // Writes the same fields again (last writer wins): safe to repeat.
  recordAssessment: { idempotent: true, args: z.tuple([z.string().max(4096), z.unknown()]) },
  startPairing: { idempotent: false, args: z.tuple([z.object({ ttlMs: z.number().int().min(1).max(86_400_000).optional() }).optional()]) },
  cancelPairing: { idempotent: true, args: z.tuple([z.string().max(64)]) },
  revokeDevice: { idempotent: false, args: z.tuple([DeviceIdSchema]) },
  acceptStaged: { idempotent: false, args: z.tuple([DocSpecSchema]) },
  // Signing out twice signs out once.
  signOut: { idempotent: true, args: z.tuple([z.object({ wipe: z.boolean().optional() })]) },
} as const;
export type CallMethod = keyof typeof CALLS;
const CallMethodSchema = z.enum(Object.keys(CALLS) as [CallMethod, ...CallMethod[]]);

/** What each call resolves to, checked by the follower before it hands it to the app. */
export const RESULTS = {
  flush: z.undefined(),
  whenSynced: z.undefined(),
  setCrisisMode: z.undefined(),
  setTherapeuticSession: z.undefined(),
  recordAssessment: z.object({
    crisis: z.boolean(),
    total: z.number(),
    complete: z.boolean(),
    reasons: z.array(z.enum(['phq9_total', 'phq9_item9', 'gad7_total'])).max(3),
    priority: z.custom<Priority>((value) => (Object.values(Priority) as unknown[]).includes(value), 'expected a priority'),
    assessment: AssessmentSchema,
  }),
  startPairing: z.object({ code: z.string().max(256), pairing: z.string().max(64) }),
  cancelPairing: z.undefined(),
  revokeDevice: z.number().int(),
  acceptStaged: z.number().int().min(0),
  signOut: z.undefined(),
} as const satisfies Record<CallMethod, z.ZodType>;

/** `client.stats()` (contract 4), mirrored like the rest of the state. */
export const SyncStatsSchema = z.object({
  outboxDepth: z.number().int().min(0),
  lastLatencyMs: z.partialRecord(DocClassSchema, z.number().min(0)),
});
export type MirroredStats = z.infer<typeof SyncStatsSchema>;

/** What a call of `method` resolves to, once checked. */
export type CallResult<M extends CallMethod> = z.infer<(typeof RESULTS)[M]>;

export const MirroredStateSchema = z.object({
  status: z.enum(['connecting', 'connected', 'offline', 'synced', 'closed']),
  tier: TierStateSchema,
  crisisMode: z.boolean(),
  devices: z.array(DeviceCertificateSchema).max(10_000),
  unconfirmed: z.number().int().min(0),
  lastContactAt: z.number().optional(),
  relayId: RelayIdSchema.optional(),
  stats: SyncStatsSchema,
});
export type MirroredState = z.infer<typeof MirroredStateSchema>;

const ErrorSchema = z.object({ code: z.string().max(64), message: z.string().max(4096) });

export const TabEventSchema = z.discriminatedUnion('name', [
  z.object({ name: z.literal('error'), error: ErrorSchema.extend({ doc: DocIdSchema.optional(), final: z.boolean().optional() }) }),
  z.object({ name: z.literal('deferred'), doc: DocIdSchema, code: z.string().max(64), retryAfterMs: z.number().min(0) }),
  z.object({ name: z.literal('staged'), doc: DocIdSchema, count: z.number().int().min(0) }),
  z.object({ name: z.literal('linked'), pairing: z.string().max(64), cert: DeviceCertificateSchema }),
  z.object({ name: z.literal('pairing-failed'), pairing: z.string().max(64), error: ErrorSchema }),
  /** The device signs out: no tab may lead again (a new leader would start from a wiped store). */
  z.object({ name: z.literal('signed-out') }),
]);
export type TabEvent = z.infer<typeof TabEventSchema>;

const base = { v: z.literal(TAB_PROTOCOL_VERSION), from: TabIdSchema };
const addressed = { ...base, to: TabIdSchema };

export const TabMessageSchema = z.discriminatedUnion('type', [
  /** A follower looking for the leader (it just started). */
  z.object({ type: z.literal('who-leads'), ...base }),
  /** The leader announces itself: to everyone when it takes over, to one tab when asked. */
  z.object({ type: z.literal('leader'), ...base, to: TabIdSchema.optional() }),
  /** Follower → leader: open a document; `sv` is the follower's state vector. */
  z.object({ type: z.literal('open'), ...addressed, id: IdSchema, spec: DocSpecSchema, sv: bytes }),
  /** Leader → follower: what the follower lacks, the leader's state vector and staged count. */
  z.object({ type: z.literal('opened'), ...addressed, id: IdSchema, doc: DocIdSchema, update: bytes, sv: bytes, staged: z.number().int().min(0) }),
  /** Follower → leader: a local change; acknowledged once durable in the leader's store. */
  z.object({ type: z.literal('update'), ...addressed, id: IdSchema, doc: DocIdSchema, update: bytes }),
  z.object({ type: z.literal('ack'), ...addressed, id: IdSchema }),
  /** Leader → all: every change of an open document, whoever made it (`origin`: the tab that did). */
  z.object({ type: z.literal('doc-update'), ...base, doc: DocIdSchema, update: bytes, origin: TabIdSchema.optional() }),
  /** Awareness states: follower → leader (`to`), leader → all or one tab; `origin`: the tab they came from. */
  z.object({ type: z.literal('awareness'), ...base, to: TabIdSchema.optional(), doc: DocIdSchema, update: bytes, origin: TabIdSchema.optional() }),
  /** Follower → leader: send me every awareness state of this document. */
  z.object({ type: z.literal('awareness-sync'), ...addressed, doc: DocIdSchema }),
  z.object({ type: z.literal('call'), ...addressed, id: IdSchema, method: CallMethodSchema, args: z.array(z.unknown()).max(4) }),
  z.object({
    type: z.literal('result'),
    ...addressed,
    id: IdSchema,
    outcome: z.discriminatedUnion('ok', [z.object({ ok: z.literal(true), value: z.unknown() }), z.object({ ok: z.literal(false), error: ErrorSchema })]),
  }),
  /** Leader → all (or one tab that just found it): the client's state, mirrored by followers. */
  z.object({ type: z.literal('state'), ...base, to: TabIdSchema.optional(), state: MirroredStateSchema }),
  z.object({ type: z.literal('event'), ...base, event: TabEventSchema }),
]);
export type TabMessage = z.infer<typeof TabMessageSchema>;
/** A message before the channel stamps it with the protocol version and the sender. */
export type OutgoingTabMessage = TabMessage extends infer M ? (M extends TabMessage ? Omit<M, 'v' | 'from'> : never) : never;
