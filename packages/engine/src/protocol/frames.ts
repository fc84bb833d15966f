import * as z from 'zod';
import { b64Length } from './bytes.js';
import { ErrorCode, type Result, err, ok } from './codes.js';
import { type JsonBudget, RELAY_FRAME_JSON_BUDGET, checkJsonBudget } from './json-budget.js';
import { EpochRecordSchema, RevocationSchema } from '../crypto/epochs.js';
import { RecoveryResetSchema, RecoverySealedSchema } from '../crypto/recovery.js';
import { TierNameSchema, TierPolicySchema } from '../policy/tiers.js';
import { CounterSchema, DeviceIdSchema, DocIdSchema, EpochSchema, LaneSchema, RelayIdSchema, SeqSchema, UserIdSchema } from './ids.js';

/**
 * Keel wire protocol v1: one JSON object per WebSocket text frame, discriminated by `type`,
 * bytes as unpadded base64url. Binary frames are not part of v1. Every frame from the network
 * is parsed here, once, by the schema of its direction; nothing else reads raw frames.
 */
export const PROTOCOL_VERSION = 1;

export const WireLimits = {
  /** Envelopes in one push or updates frame. */
  maxEnvelopesPerFrame: 512,
  /** Documents in one subscribe frame. */
  maxDocsPerSubscribe: 1024,
  /** Sealed bytes in one envelope (64 MiB); the relay's frame limit is usually lower. */
  maxCiphertextBytes: 64 * 1024 * 1024,
  /** Parts one update may be split into (each its own envelope), so no frame passes the relay's limit. */
  maxPartsPerUpdate: 4096,
  /**
   * The largest update (all its parts) a device seals in one: more pending changes go out as
   * several updates. A receiving device holds split updates in memory until their last part, so
   * this is also what one author can make it hold at once.
   */
  maxUpdateBytes: 64 * 1024 * 1024,
  /** The relay's frame limit after authentication unless configured; a device assumes it until `ready` says. */
  defaultMaxFrameBytes: 1024 * 1024,
  /**
   * The largest frame a device reads from any relay, whatever the relay announces: a relay
   * announcing more is clamped to this (and the device sizes its own parts by it), so no relay
   * can make a device buffer and parse more than this per frame.
   */
  maxInboundFrameBytes: 8 * 1024 * 1024,
  /** Device certificates a relay sends in `ready`. */
  maxCertificates: 256,
  /** Issuer certificates a new device may present with its own. */
  maxChain: 8,
  /**
   * Padded bytes of one sealed awareness update (cursors, presence), far above any honest state:
   * its ciphertext is this plus the 16-byte AEAD tag at most, so updates up to 64 KiB − 2 fit.
   */
  maxAwarenessBytes: 64 * 1024,
  /**
   * Awareness older than this (by the timestamp its author sealed into it) is dropped: y-protocols'
   * outdated timeout, after which a state counts as gone anyway. A relay replaying one later gets nowhere.
   */
  awarenessMaxAgeMs: 30_000,
} as const;

const b64Exact = (bytes: number) => z.string().length(b64Length(bytes)).regex(/^[A-Za-z0-9_-]*$/, 'not base64url');
const b64Max = (bytes: number) => z.string().max(b64Length(bytes)).regex(/^[A-Za-z0-9_-]*$/, 'not base64url');

export const EnvelopeKindSchema = z.enum(['update', 'snapshot']);
export type EnvelopeKind = z.infer<typeof EnvelopeKindSchema>;

/**
 * A sealed, signed update or snapshot. `doc`, `kind`, `epoch`, `device`, `counter` and `lane`
 * are bound into the AEAD's associated data and, with nonce and ciphertext, into the author's
 * Ed25519 signature: the relay can read them but change none.
 */
export const EnvelopeSchema = z
  .strictObject({
    doc: DocIdSchema,
    kind: EnvelopeKindSchema,
    epoch: EpochSchema,
    device: DeviceIdSchema,
    /** Updates: the author's counter for the document (last + 1). Snapshots: the author's own snapshot number. */
    counter: CounterSchema,
    lane: LaneSchema,
    /** Snapshots only: the snapshot holds every log entry up to this seq. */
    base: SeqSchema.optional(),
    /**
     * Part `index` of an update split into `count` envelopes with consecutive counters (the
     * first part's counter + index), applied only once every part is here. Absent: one envelope.
     */
    part: z
      .strictObject({ index: z.number().int().min(0), count: z.number().int().min(2).max(WireLimits.maxPartsPerUpdate) })
      .refine((p) => p.index < p.count, { message: 'a part index is below the part count' })
      .optional(),
    nonce: b64Exact(24),
    ct: b64Max(WireLimits.maxCiphertextBytes).min(b64Length(17)),
    sig: b64Exact(64),
  })
  .refine((env) => (env.kind === 'snapshot') === (env.base !== undefined), {
    message: 'a snapshot carries the seq it covers (base); an update does not',
    path: ['base'],
  })
  .refine((env) => env.part === undefined || env.kind === 'update', { message: 'only updates are split into parts', path: ['part'] });
export type Envelope = z.infer<typeof EnvelopeSchema>;

/**
 * Who certified a device: the user key (`null`, a user's first device), the user's recovery key
 * (`'recovery'`, a device enrolled with the 12 words), or an already registered device.
 */
export const CertificateIssuerSchema = z.union([DeviceIdSchema, z.literal('recovery')]).nullable();
export type CertificateIssuer = z.infer<typeof CertificateIssuerSchema>;

/**
 * A device's Ed25519 key certified either by the user's key (the first device of a user,
 * `issuer: null`), by the user's recovery key (`issuer: 'recovery'`), or by an already
 * registered device of the same user. The first device's certificate names the recovery
 * public key (`recoveryKey`), bound into the user key's signature.
 */
export const DeviceCertificateSchema = z.strictObject({
  user: UserIdSchema,
  userKey: b64Exact(32),
  device: DeviceIdSchema,
  deviceKey: b64Exact(32),
  issuer: CertificateIssuerSchema,
  issuedAt: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  /** First devices only: the user's recovery public key (absent in certificates made before recovery keys). */
  recoveryKey: b64Exact(32).optional(),
  sig: b64Exact(64),
});
export type DeviceCertificate = z.infer<typeof DeviceCertificateSchema>;

const SubscriptionSchema = z.strictObject({
  doc: DocIdSchema,
  after: SeqSchema,
  /**
   * Asked for proof of this device's own pushes, not for their content: in this catch-up the
   * relay sends the device's own entries as `own` stubs (counter and signature) instead of the
   * envelopes, which the device still holds. Entries of other devices come as usual.
   */
  proof: z.literal(true).optional(),
});

/**
 * The user's tier as the relay enforces it: its name and the effective policy (operators may
 * override the defaults), so the device schedules by the same numbers the relay enforces.
 */
export const TierStateSchema = z.strictObject({
  name: TierNameSchema,
  policy: TierPolicySchema,
  /** When this tier took effect (ms since epoch). */
  since: z.number().int().min(0),
  /**
   * When the grace period ends (ms since epoch), sent while the tier is `grace_period` and the
   * relay knows the end (one a payment failure started); the app shows it to the user.
   */
  graceEndsAt: z.number().int().min(0).optional(),
});
export type TierState = z.infer<typeof TierStateSchema>;

/**
 * A sealed, signed awareness update (y-protocols `encodeAwarenessUpdate`): ephemeral presence,
 * never stored or logged. No counter: `at` (the author's clock, ms since epoch) orders and ages
 * it instead. `doc`, `epoch`, `device` and `at` are bound into the AEAD's associated data and,
 * with nonce and ciphertext, into the author's signature, under labels of their own
 * (`Domain.awareness*`), so an awareness frame can never pass as an update envelope or the
 * other way round.
 */
export const AwarenessEnvelopeSchema = z.strictObject({
  doc: DocIdSchema,
  epoch: EpochSchema,
  device: DeviceIdSchema,
  at: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  nonce: b64Exact(24),
  ct: b64Max(WireLimits.maxAwarenessBytes + 16).min(b64Length(17)),
  sig: b64Exact(64),
});
export type AwarenessEnvelope = z.infer<typeof AwarenessEnvelopeSchema>;

/**
 * Both directions: a device sends its awareness for a document it subscribed to; the relay
 * forwards it unchanged to the user's other devices subscribed to that document.
 */
export const AwarenessFrameSchema = z.strictObject({ type: z.literal('awareness'), aw: AwarenessEnvelopeSchema });
export type AwarenessFrame = z.infer<typeof AwarenessFrameSchema>;

/** `kst_` and 32 random bytes in base64url; the relay keeps only its SHA-256. */
export const SignupTokenSchema = z.string().regex(/^kst_[A-Za-z0-9_-]{43}$/, 'not a signup token (kst_ and 43 base64url characters)');

// ── device → relay ──────────────────────────────────────────────────────────────────────
export const HelloFrameSchema = z.strictObject({
  type: z.literal('hello'),
  v: z.number().int(),
  user: UserIdSchema,
  device: DeviceIdSchema,
  /** This device's certificate, for a relay that does not know the device yet. */
  cert: DeviceCertificateSchema.optional(),
  /**
   * Certificates of the issuers above `cert`, root first, so a linked device can register
   * even if the device that certified it has not reached this relay yet.
   */
  chain: z.array(DeviceCertificateSchema).max(WireLimits.maxChain).optional(),
  /**
   * A user's first device: the root key sealed to the recovery key its certificate names. The
   * relay keeps it and hands it out in `ready`, to a device enrolled with the 12 words.
   */
  escrow: RecoverySealedSchema.optional(),
  /**
   * A reset signed by the user's recovery key that keeps this device: applied once the device
   * answered the challenge (every other device of the user is revoked, the kept ones are live).
   */
  recovery: RecoveryResetSchema.optional(),
  /**
   * A signup token from the relay's operator: a relay with `--registration token` creates a new
   * user only for a first device that presents one (used once). Ignored for existing users.
   */
  signup: SignupTokenSchema.optional(),
});
export const AuthFrameSchema = z.strictObject({ type: z.literal('auth'), sig: b64Exact(64) });
export const SubscribeFrameSchema = z.strictObject({
  type: z.literal('sub'),
  docs: z.array(SubscriptionSchema).min(1).max(WireLimits.maxDocsPerSubscribe),
});
export const UnsubscribeFrameSchema = z.strictObject({
  type: z.literal('unsub'),
  docs: z.array(DocIdSchema).min(1).max(WireLimits.maxDocsPerSubscribe),
});
/** Pairing sessions are looked up by a random id; the code's secret never reaches the relay. */
const PairingIdSchema = z.string().regex(/^[A-Za-z0-9_-]{16}$/, 'not a pairing id');
const PairGrantBody = { id: PairingIdSchema, sealed: b64Max(8 * 1024), mac: b64Exact(32) };

/** An existing device offers a pairing code for `ttlMs`. */
export const PairOpenFrameSchema = z.strictObject({
  type: z.literal('pair-open'),
  id: PairingIdSchema,
  ttlMs: z.number().int().min(1_000).max(15 * 60_000),
});
/** A new, not yet registered device asks to join with a code (first frame instead of hello). */
export const PairJoinFrameSchema = z.strictObject({
  type: z.literal('pair-join'),
  v: z.number().int(),
  id: PairingIdSchema,
  deviceKey: b64Exact(32),
  proof: b64Exact(32),
});
/** The existing device's answer: root key and certificate sealed to the new device. */
export const PairGrantFrameSchema = z.strictObject({ type: z.literal('pair-grant'), ...PairGrantBody });
export const PairRefuseFrameSchema = z.strictObject({ type: z.literal('pair-refuse'), id: PairingIdSchema, reason: z.string().max(200) });
/** An authenticated device registers a device it certified. */
export const RegisterFrameSchema = z.strictObject({ type: z.literal('register'), cert: DeviceCertificateSchema });
export const RevokeFrameSchema = z.strictObject({ type: z.literal('revoke'), revocation: RevocationSchema });
export const EpochFrameSchema = z.strictObject({ type: z.literal('epoch'), record: EpochRecordSchema });
/**
 * A device enrolled from nothing but the 12 words asks which user its recovery key belongs to
 * (first frame instead of hello; the relay answers `recovery-found` and closes).
 */
export const RecoveryFindFrameSchema = z.strictObject({ type: z.literal('recovery-find'), v: z.number().int(), recoveryKey: b64Exact(32) });
/**
 * A live device vouches for another device of the user: a certificate it signed for a device
 * already registered. A vouched device outlives the revocation of the device that registered it.
 */
export const VouchFrameSchema = z.strictObject({ type: z.literal('vouch'), cert: DeviceCertificateSchema });

export const PushFrameSchema = z.strictObject({
  type: z.literal('push'),
  envs: z.array(EnvelopeSchema).min(1).max(WireLimits.maxEnvelopesPerFrame),
});

/**
 * A liveness probe after authentication: the relay answers `pong` with the same id at once.
 * Browsers cannot send WebSocket pings, and a half-open socket (a proxy that silently drops
 * traffic) looks healthy to both ends until something is sent and not answered.
 */
export const PingFrameSchema = z.strictObject({ type: z.literal('ping'), id: z.number().int().min(0).max(0x7fff_ffff) });

/**
 * A device applied crisis-lane log entries of a document (to the live document, at once: crisis
 * content is never staged): the relay times each from the push that carried it to this receipt,
 * and raises an alert when one takes longer than the crisis SLA (200 ms) or never comes. Sent
 * for every crisis-lane entry applied, live or caught up; the relay ignores those it does not
 * wait for. Carries only seqs the relay already knows.
 */
export const ReceiptFrameSchema = z.strictObject({
  type: z.literal('receipt'),
  doc: DocIdSchema,
  seqs: z.array(SeqSchema).min(1).max(WireLimits.maxEnvelopesPerFrame),
});

/**
 * A device refused a signed envelope of its user for what the relay cannot see: its lane is above
 * its document class's ceiling (LANE_MISMATCH: bulk data labelled as crisis). Reported so the
 * relay can audit it and alert its operator; it names only ids the relay already holds.
 */
export const ReportFrameSchema = z.strictObject({
  type: z.literal('report'),
  code: z.literal('LANE_MISMATCH'),
  doc: DocIdSchema,
  device: DeviceIdSchema,
  counter: CounterSchema,
  lane: LaneSchema,
});

export const ClientFrameSchema = z.discriminatedUnion('type', [
  PingFrameSchema,
  ReceiptFrameSchema,
  ReportFrameSchema,
  AwarenessFrameSchema,
  HelloFrameSchema,
  AuthFrameSchema,
  SubscribeFrameSchema,
  UnsubscribeFrameSchema,
  PushFrameSchema,
  PairOpenFrameSchema,
  PairJoinFrameSchema,
  PairGrantFrameSchema,
  PairRefuseFrameSchema,
  RegisterFrameSchema,
  RevokeFrameSchema,
  EpochFrameSchema,
  RecoveryFindFrameSchema,
  VouchFrameSchema,
]);
export type ClientFrame = z.infer<typeof ClientFrameSchema>;
export type HelloFrame = z.infer<typeof HelloFrameSchema>;
export type PushFrame = z.infer<typeof PushFrameSchema>;
export type ReceiptFrame = z.infer<typeof ReceiptFrameSchema>;
export type ReportFrame = z.infer<typeof ReportFrameSchema>;

// ── relay → device ──────────────────────────────────────────────────────────────────────
export const ChallengeFrameSchema = z.strictObject({
  type: z.literal('challenge'),
  v: z.number().int(),
  relay: RelayIdSchema,
  nonce: b64Exact(32),
});
export const ReadyFrameSchema = z.strictObject({
  type: z.literal('ready'),
  user: UserIdSchema,
  device: DeviceIdSchema,
  certs: z.array(DeviceCertificateSchema).max(WireLimits.maxCertificates),
  tier: TierStateSchema,
  /** Every key epoch of the user after the first; each device opens the ones sealed to it. */
  epochs: z.array(EpochRecordSchema).max(64).optional(),
  /** What this relay accepts, so the device sizes its frames (large updates go in parts). */
  limits: z.strictObject({ maxFrameBytes: z.number().int().min(4096) }).optional(),
  /** Certificates of revoked devices: their earlier writes still verify; never epoch recipients. */
  revokedCerts: z.array(DeviceCertificateSchema).max(WireLimits.maxCertificates).optional(),
  /** The root key sealed to the user's recovery key (users created with one). */
  escrow: RecoverySealedSchema.optional(),
  /**
   * Every signed revocation of the user's devices the relay stored: a device checks each and
   * keeps them, so a revocation once seen wins over any certificate the relay sends later.
   * (Devices a revocation took with it by cascade need no record: their chains end at it.)
   */
  revocations: z.array(RevocationSchema).max(WireLimits.maxCertificates).optional(),
  /** The user's latest recovery reset, signed by the recovery key: its kept devices are the roots of trust. */
  reset: RecoveryResetSchema.optional(),
});
export const AckFrameSchema = z.strictObject({
  type: z.literal('ack'),
  acks: z
    .array(
      z.strictObject({
        doc: DocIdSchema,
        counter: CounterSchema,
        seq: SeqSchema,
        /** Acknowledges a snapshot (its own counter space; `seq` is its base). */
        kind: EnvelopeKindSchema.optional(),
      }),
    )
    .min(1)
    .max(WireLimits.maxEnvelopesPerFrame),
});
export const RejectFrameSchema = z.strictObject({
  type: z.literal('reject'),
  doc: DocIdSchema,
  counter: CounterSchema,
  code: z.enum(ErrorCode),
  message: z.string().max(1024),
  /** A deferral, not a refusal: resend this and every later envelope of the document after this long. */
  retryAfterMs: z.number().int().min(0).max(7 * 24 * 3600 * 1000).optional(),
  /** Refuses a snapshot (its own counter space). */
  kind: EnvelopeKindSchema.optional(),
  /**
   * With COUNTER_GAP: the counter the relay expects next from this device for the document, so
   * a device whose earlier envelope is gone from its outbox (a false acknowledgment, a forged
   * echo) can fill the gap instead of resending what the relay already refuses.
   */
  expected: CounterSchema.optional(),
});
/** A log entry with its envelope. */
const LogItemSchema = z.strictObject({ seq: SeqSchema, env: EnvelopeSchema });
/**
 * A log entry the receiving device wrote, in a catch-up it asked with `proof`: the counter and
 * signature the relay reads back from its log, not the ciphertext. It proves what the envelope
 * itself would: the device still holds the envelope, and the signature binds its ciphertext.
 */
const OwnItemSchema = z.strictObject({ seq: SeqSchema, own: z.strictObject({ counter: CounterSchema, sig: b64Exact(64) }) });
export type LogItem = z.infer<typeof LogItemSchema>;
export type OwnItem = z.infer<typeof OwnItemSchema>;
export type UpdatesItem = LogItem | OwnItem;
export const UpdatesFrameSchema = z.strictObject({
  type: z.literal('updates'),
  doc: DocIdSchema,
  items: z.array(z.union([LogItemSchema, OwnItemSchema])).min(1).max(WireLimits.maxEnvelopesPerFrame),
});
export const SyncedFrameSchema = z.strictObject({ type: z.literal('synced'), doc: DocIdSchema, seq: SeqSchema });
/**
 * Log entries the relay keeps from this device because the tier has no cross-device sync
 * (crisis lanes are never withheld). They arrive once the tier allows it.
 */
export const WithheldFrameSchema = z.strictObject({
  type: z.literal('withheld'),
  doc: DocIdSchema,
  seqs: z.array(SeqSchema).max(WireLimits.maxEnvelopesPerFrame),
  /** Every seq up to this one is withheld or already pruned into a snapshot this device may not read. */
  through: SeqSchema.optional(),
});
/** The latest snapshot of a document, sent before the log entries after its base. */
export const SnapshotFrameSchema = z.strictObject({ type: z.literal('snapshot'), doc: DocIdSchema, env: EnvelopeSchema });
/** The user's tier changed (payment, operator); applies to the device's next scheduling decision. */
export const TierFrameSchema = z.strictObject({ type: z.literal('tier'), tier: TierStateSchema });
export const DeviceFrameSchema = z.strictObject({ type: z.literal('device'), cert: DeviceCertificateSchema });
export const ErrorFrameSchema = z.strictObject({
  type: z.literal('error'),
  code: z.enum(ErrorCode),
  message: z.string().max(1024),
  doc: DocIdSchema.optional(),
});

export const PairOpenedFrameSchema = z.strictObject({ type: z.literal('pair-opened'), id: PairingIdSchema, expiresAt: z.number().int() });
/** To the device that opened the session: someone holding a code wants to join. */
export const PairRequestFrameSchema = z.strictObject({
  type: z.literal('pair-request'),
  id: PairingIdSchema,
  deviceKey: b64Exact(32),
  proof: b64Exact(32),
});
/**
 * A device of the user is revoked. `device` is only a hint: a device believes the signed record
 * (the revocation that cut it off — for a cascade, the revocation of the device it hung from —
 * or the recovery reset), never the frame alone.
 */
export const RevokedFrameSchema = z.strictObject({
  type: z.literal('revoked'),
  device: DeviceIdSchema,
  revocation: RevocationSchema.optional(),
  reset: RecoveryResetSchema.optional(),
});
/**
 * The answer to `recovery-find`: the user of that recovery key, its last recovery generation and
 * the root key sealed to the recovery key, so the device can open it before it resets anything.
 */
export const RecoveryFoundFrameSchema = z.strictObject({
  type: z.literal('recovery-found'),
  user: UserIdSchema,
  userKey: b64Exact(32),
  gen: z.number().int().min(0).max(0x7fff_ffff),
  escrow: RecoverySealedSchema.optional(),
});
/** A vouch was stored (to every connection of the user, the vouching one included). */
export const VouchedFrameSchema = z.strictObject({ type: z.literal('vouched'), cert: DeviceCertificateSchema });

/**
 * The last connection of one of the user's devices closed: its awareness states (cursors) go at
 * once instead of after the 30 s timeout. Only a hint; a relay that never sends it costs 30 s.
 */
export const AwarenessGoneFrameSchema = z.strictObject({ type: z.literal('awareness-gone'), device: DeviceIdSchema });

/** The answer to `ping`. */
export const PongFrameSchema = z.strictObject({ type: z.literal('pong'), id: z.number().int().min(0).max(0x7fff_ffff) });

/**
 * An external crisis signal as the relay forwards it (see crypto/crisis-signal.ts): `id` is the
 * sender's (a signal sent twice is acted on once), `at` its time (ms), `reason` from a fixed set
 * (never free text: the relay and its logs carry no clinical detail), `sig` the crisis
 * authority's signature when the operator has one.
 */
export const CrisisSignalSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, 'a signal id is 8-64 letters, digits, _ or -'),
  at: z.number().int().min(0),
  reason: z.enum(['clinician', 'hotline', 'care_team', 'other']),
  sig: b64Exact(64).optional(),
});
export type CrisisSignal = z.infer<typeof CrisisSignalSchema>;
/** The relay tells a device of an external crisis signal for its user (online at once, at crisis priority; offline on its next connection). */
export const CrisisSignalFrameSchema = z.strictObject({ type: z.literal('crisis-signal'), signal: CrisisSignalSchema });

export const RelayFrameSchema = z.discriminatedUnion('type', [
  CrisisSignalFrameSchema,
  PongFrameSchema,
  AwarenessFrameSchema,
  AwarenessGoneFrameSchema,
  PairOpenedFrameSchema,
  PairRequestFrameSchema,
  PairGrantFrameSchema,
  RevokedFrameSchema,
  EpochFrameSchema,
  ChallengeFrameSchema,
  ReadyFrameSchema,
  AckFrameSchema,
  RejectFrameSchema,
  UpdatesFrameSchema,
  SyncedFrameSchema,
  SnapshotFrameSchema,
  WithheldFrameSchema,
  TierFrameSchema,
  DeviceFrameSchema,
  ErrorFrameSchema,
  RecoveryFoundFrameSchema,
  VouchedFrameSchema,
]);
export type RelayFrame = z.infer<typeof RelayFrameSchema>;
export type AckFrame = z.infer<typeof AckFrameSchema>;
export type UpdatesFrame = z.infer<typeof UpdatesFrameSchema>;
export type ErrorFrame = z.infer<typeof ErrorFrameSchema>;
export type RejectFrame = z.infer<typeof RejectFrameSchema>;

/** The `type` of every frame of a direction, read off its schema so the two never disagree. */
const typesOf = (schema: { options: readonly { shape: { type: { value: string } } }[] }): ReadonlySet<string> =>
  new Set(schema.options.map((option) => option.shape.type.value));
const CLIENT_TYPES = typesOf(ClientFrameSchema);
const RELAY_TYPES = typesOf(RelayFrameSchema);

/** Summarises zod issues into one bounded line: path and message of the first few. */
export const describeIssues = (error: z.ZodError): string => {
  const parts = error.issues.slice(0, 3).map((issue) => `${issue.path.join('.') || '(frame)'}: ${issue.message}`);
  const more = error.issues.length > 3 ? ` (+${error.issues.length - 3} more)` : '';
  return (parts.join('; ') + more).slice(0, 512);
};

/** A frame whose JSON is read and whose `type` is known, not yet checked against its schema. */
export interface RawFrame {
  readonly type: string;
  readonly json: Readonly<Record<string, unknown>>;
}

const readWith = (known: ReadonlySet<string>, data: string | Uint8Array, maxBytes: number, budget?: JsonBudget): Result<RawFrame> => {
  if (typeof data !== 'string') return err(ErrorCode.BINARY_FRAME, 'binary frames are not part of protocol v1; send JSON text');
  // A JS string's length bounds its UTF-8 size from below; `maxBytes` guards parse cost.
  if (data.length > maxBytes) return err(ErrorCode.FRAME_TOO_LARGE, `frame of ${data.length} characters exceeds ${maxBytes}`);
  if (budget) {
    const within = checkJsonBudget(data, budget);
    if (!within.ok) return within;
  }
  let json: unknown;
  try {
    json = JSON.parse(data);
  } catch {
    return err(ErrorCode.BAD_JSON, 'frame is not valid JSON');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return err(ErrorCode.SCHEMA, 'frame must be a JSON object');
  const type = (json as { type?: unknown }).type;
  if (typeof type !== 'string') return err(ErrorCode.SCHEMA, 'frame has no string "type"');
  if (!known.has(type)) return err(ErrorCode.UNKNOWN_TYPE, `unknown frame type "${type.slice(0, 32)}"`);
  return ok({ type, json: json as Record<string, unknown> });
};

const validateWith = <T>(schema: z.ZodType<T>, raw: RawFrame): Result<T> => {
  const parsed = schema.safeParse(raw.json);
  if (!parsed.success) return err(ErrorCode.SCHEMA, `invalid "${raw.type}" frame: ${describeIssues(parsed.error)}`);
  return ok(parsed.data);
};

/**
 * First half of parsing a device's frame: size, JSON, a known type. The relay uses it to route a
 * frame before paying for full validation (bulk pushes are validated when their turn comes).
 */
export const readClientFrame = (data: string | Uint8Array, maxBytes: number): Result<RawFrame> => readWith(CLIENT_TYPES, data, maxBytes);

/** Second half: the frame's schema. */
export const validateClientFrame = (raw: RawFrame): Result<ClientFrame> => validateWith(ClientFrameSchema, raw);

/** Parses a frame a device sent to the relay. */
export const parseClientFrame = (data: string | Uint8Array, maxBytes: number): Result<ClientFrame> => {
  const raw = readClientFrame(data, maxBytes);
  return raw.ok ? validateClientFrame(raw.value) : raw;
};

/**
 * Parses a frame the relay sent to a device: size, then the JSON budget (depth and values,
 * checked before JSON.parse so a hostile frame costs one linear scan), then its schema.
 */
export const parseRelayFrame = (data: string | Uint8Array, maxBytes: number, budget: JsonBudget = RELAY_FRAME_JSON_BUDGET): Result<RelayFrame> => {
  const raw = readWith(RELAY_TYPES, data, maxBytes, budget);
  return raw.ok ? validateWith(RelayFrameSchema, raw.value) : raw;
};

export const encodeFrame = (frame: ClientFrame | RelayFrame): string => JSON.stringify(frame);

/** What a push frame adds around its envelopes' ciphertext, with room to spare (header fields, JSON). */
const FRAME_OVERHEAD_CHARS = 2048;

/**
 * The most plaintext one part of a split update may carry so that a push frame holding it stays
 * within `maxFrameBytes`: base64 turns 3 bytes into 4 characters, and the sealed body adds a
 * flag byte and the AEAD tag.
 */
export const maxPartPayloadBytes = (maxFrameBytes: number): number => Math.max(1024, Math.floor(((maxFrameBytes - FRAME_OVERHEAD_CHARS) * 3) / 4) - 64);

/** Room above a relay's announced frame limit for what an `updates` frame adds around one envelope (seq, item wrapping). */
const INBOUND_MARGIN_BYTES = 64 * 1024;

/**
 * The frame limit a device sizes its own frames by: the relay's announced one, clamped so that
 * an envelope it pushes still fits in the frame other devices receive it in (below
 * maxInboundFrameBytes with the margin). A relay announcing 64 MiB gets parts of about 8 MiB.
 */
export const clampRelayFrameLimit = (announced: number): number => Math.min(announced, WireLimits.maxInboundFrameBytes - INBOUND_MARGIN_BYTES);

/**
 * The largest frame a device accepts from its relay. Before `ready` (`announced` undefined) the
 * relay's default limit: a challenge and a `ready` fit in it. After, the announced limit (clamped)
 * plus a margin, never below the default: the relay packs catch-up pages by its own measure
 * (up to 512 envelopes), whatever limit it enforces on pushes. At most maxInboundFrameBytes.
 */
export const inboundFrameBudget = (announced?: number): number => {
  if (announced === undefined) return WireLimits.defaultMaxFrameBytes;
  return Math.max(clampRelayFrameLimit(announced), WireLimits.defaultMaxFrameBytes) + INBOUND_MARGIN_BYTES;
};
