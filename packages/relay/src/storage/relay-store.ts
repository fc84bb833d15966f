import type { CrisisSignal, DeviceCertificate, DeviceId, DocId, Envelope, EpochRecord, KeelError, RecoveryReset, Result, Revocation, Seq, TierName, UserId } from '@keel/engine';

/** A registered device as the relay knows it. */
export interface DeviceRecord {
  readonly deviceId: DeviceId;
  readonly userId: UserId;
  readonly publicKey: Uint8Array;
  readonly cert: DeviceCertificate;
  readonly registeredAt: number;
  readonly revokedAt: number | null;
}

/** One stored envelope and its place in the document's log. */
export interface LogEntry {
  readonly seq: Seq;
  readonly env: Envelope;
  readonly receivedAt: number;
}

export type SnapshotOutcome =
  | { readonly status: 'stored'; readonly seq: Seq; readonly pruned: number }
  | { readonly status: 'rejected'; readonly error: KeelError };

/** A stored snapshot; `env.base` is the seq it covers. */
export interface SnapshotEntry {
  readonly env: Envelope;
  readonly receivedAt: number;
}

/** An envelope whose signature the relay has already checked against its author's key. */
export interface AppendRequest {
  readonly userId: UserId;
  readonly env: Envelope;
  /** Counts toward the user's daily data limit (every lane but crisis) on this UTC day. */
  readonly meter?: { readonly day: string; readonly bytes: number };
}

/** What a user is entitled to, as the payment system last said. */
export interface EntitlementRecord {
  readonly userId: UserId;
  readonly tier: TierName;
  readonly updatedAt: number;
  /** Who set it: 'operator', 'webhook', 'grace-expiry'… (never a person's name). */
  readonly source: string;
}

/** Who changed a tier: an operator command, a payment webhook, or a grace period running out. */
export type TierSource = 'operator' | 'webhook' | 'grace-expiry';

/** Audit detail: ids, codes, tiers and times only — never a name, email, body or payload. */
export type AuditDetail = Readonly<Record<string, string | number | boolean | null>>;

/** An audit row before the store numbers and chains it. */
export interface AuditDraft {
  /** Who did it: 'operator', 'webhook', 'grace-expiry', 'relay'. */
  readonly actor: string;
  /** What: 'payment.event', 'tier.set', 'grace.start', 'grace.end'. */
  readonly op: string;
  readonly userId: UserId | null;
  /** A stable code: 'applied', 'duplicate', 'stale', 'BAD_SIGNATURE'… */
  readonly outcome: string;
  readonly detail: AuditDetail;
  /**
   * Keep only the keyed pseudonym of `userId` (user_ref), not the id itself: the record of a
   * user's deletion, which must not name the user it removed.
   */
  readonly eraseUserId?: boolean;
  /**
   * Device or document ids the row is about, by detail key: the store writes each as its keyed
   * pseudonym (HMAC under the audit key, like `userRef`) into the detail, never the id itself, so
   * no audit row still names a device or document of a user after `user delete`.
   */
  readonly refs?: Readonly<Record<string, string>>;
  /**
   * When it happened (ms), if earlier than the append: batched rows (observe/sync-audit.ts) keep
   * their event's time. Must not be after the append's `now`.
   */
  readonly at?: number;
}

/** A stored audit row: numbered from 1 and hash-chained to the row before it. */
export interface AuditRecord {
  readonly seq: number;
  readonly at: number;
  readonly actor: string;
  readonly op: string;
  /** The user the row is about; not hashed, and erased (null) when the user is deleted. */
  readonly userId: UserId | null;
  /** Keyed pseudonym of the user id (audit/audit-chain.ts `auditUserRef`), hashed; stays after a deletion. */
  readonly userRef: string | null;
  readonly outcome: string;
  /** Canonical JSON (sorted keys) of the detail, exactly as hashed. */
  readonly detail: string;
  /** Hex SHA-256 of the row before (64 zeros for the first). */
  readonly prevHash: string;
  readonly hash: string;
}

/** A payment-provider subscription as the relay keeps it: ids, price, tier, status, times. */
export interface SubscriptionRecord {
  /** Opaque provider id, e.g. `sub_…`. */
  readonly subscriptionId: string;
  readonly userId: UserId;
  readonly priceId: string | null;
  /** The paid tier the price maps to; null when the price is not in the map. */
  readonly tier: TierName | null;
  /** Provider status: active, trialing, past_due, unpaid, canceled, incomplete… */
  readonly status: string;
  /** `created` (ms) of the newest event applied to this subscription: older events are stale. */
  readonly eventAt: number;
  readonly updatedAt: number;
}

/** An open grace period: the user keeps `grace_period` until `endsAt` unless payment recovers. */
export interface GraceRecord {
  readonly userId: UserId;
  /** The paid tier the user held when the payment failed (restored on recovery). */
  readonly paidTier: TierName;
  readonly startedAt: number;
  /** Absolute end (ms since epoch): a restart neither loses nor extends the period. */
  readonly endsAt: number;
  /** Failures in the rolling window, this one included, that set the length. */
  readonly failures: number;
}

/**
 * Everything one payment event (or a grace expiry) changes, written in one transaction with the
 * tier change if there is one, so a crash never leaves half of it applied.
 */
export interface PaymentWrite {
  /** The provider event, recorded so it is applied once; the write fails if it was recorded before. */
  readonly event?: { readonly id: string; readonly type: string; readonly outcome: string };
  readonly subscription?: SubscriptionRecord;
  readonly grace?: { readonly set: GraceRecord } | { readonly clear: UserId };
  /**
   * A payment failure that started a grace period, for the failure-history window; failures
   * of the user before `forgetBefore` (outside every window) are deleted with it.
   */
  readonly failure?: { readonly userId: UserId; readonly at: number; readonly forgetBefore?: number };
  readonly audit?: readonly AuditDraft[];
}

export type SignupTokenOutcome = 'accepted' | 'unknown' | 'used' | 'expired';

export type AppendOutcome =
  | { readonly status: 'stored'; readonly seq: Seq }
  /** The same envelope (same author, counter and signature) was stored before. */
  | { readonly status: 'duplicate'; readonly seq: Seq }
  | { readonly status: 'rejected'; readonly error: KeelError };

/** What the relay keeps of a user's recovery key (users created before recovery keys have none). */
export interface UserRecovery {
  readonly userId: UserId;
  readonly userKey: Uint8Array;
  /** Ed25519 public key named by the first device's certificate. */
  readonly recoveryKey: Uint8Array;
  /** Generation of the last reset applied (0: none); the next reset must carry this + 1. */
  readonly gen: number;
  /** The root key sealed to the recovery key (base64url), as the first device presented it. */
  readonly escrow: string | null;
  /**
   * The last reset applied, as the recovery key signed it (generation `gen`): devices believe a
   * reset only from this record. Null before the first, and for resets applied before the relay
   * kept them.
   */
  readonly reset: RecoveryReset | null;
}

/** A device enrolled by the recovery key as part of a reset. */
export interface RecoveryEnrolment {
  readonly cert: DeviceCertificate;
  readonly publicKey: Uint8Array;
  readonly userKey: Uint8Array;
}

/** What a reset changed. */
export interface ResetOutcome {
  /** Devices that were live and are revoked now. */
  readonly revoked: DeviceRecord[];
  /** The kept devices, live now (reinstated if they were revoked). */
  readonly kept: DeviceRecord[];
  /** The device the reset enrolled, when it was new. */
  readonly enrolled?: DeviceRecord;
}

/** Signed records behind a device's revocation; see RelayStore.revocationRecords. */
export interface RevocationRecords {
  readonly revocation?: Revocation;
  readonly reset?: RecoveryReset;
}

/** Bounds on a user's devices, checked in the same transaction as a registration. */
export interface DeviceLimits {
  /** Devices not revoked. */
  readonly maxLive: number;
  /** Every device ever registered, revoked ones included (the devices table must not grow without end). */
  readonly maxTotal: number;
}

/** How long, and how many of one user's, external crisis signals are kept. */
export interface CrisisSignalLimits {
  readonly retentionMs: number;
  readonly maxPerUser: number;
}

/**
 * The relay's durable state: users, devices and per-document ciphertext logs. The relay keeps
 * nothing in memory that a second node could not rebuild from here. Implementations: SQLite
 * (embedded default); a PostgreSQL one must pass the same conformance suite.
 *
 * Documents live in per-user namespaces: a document is named by (user, doc id), so no user can
 * own, squat or probe another user's document id — the same id in two users' spaces is two
 * unrelated documents.
 */
export interface RelayStore {
  getDevice(deviceId: DeviceId): Promise<DeviceRecord | undefined>;
  listDevices(userId: UserId): Promise<DeviceRecord[]>;
  /**
   * Registers a device whose certificate the caller verified. A certificate issued by the user
   * key (`issuer: null`) is accepted only for a user with no devices yet; the check and the
   * insert are one transaction, so two racing "first devices" cannot both win. Past `limits`
   * the registration is refused with LIMIT_EXCEEDED.
   */
  registerDevice(
    cert: DeviceCertificate,
    publicKey: Uint8Array,
    userKey: Uint8Array,
    now: number,
    limits: DeviceLimits,
    /** First devices: the root key sealed to the recovery key the certificate names; kept with the user. */
    escrow?: string,
  ): Promise<Result<DeviceRecord>>;
  /**
   * Appends envelopes in order, in one transaction, and returns one outcome per request. Each
   * goes to its user's namespace; the counter must be the author's last + 1 for that document.
   * Resolves only after the transaction is durable.
   */
  append(batch: readonly AppendRequest[], now: number): Promise<AppendOutcome[]>;
  /**
   * Log entries of a user's document with seq > `after`, in seq order: at most `limit`, and no
   * more once `maxBytes` of ciphertext are reached (the first entry is always returned).
   */
  readLog(userId: UserId, docId: DocId, after: Seq, limit: number, maxBytes?: number): Promise<LogEntry[]>;
  /** Highest seq of a user's document (0 when empty or unknown). */
  headSeq(userId: UserId, docId: DocId): Promise<Seq>;
  /** The author's last stored counter for a user's document (0 when none). */
  lastCounter(userId: UserId, docId: DocId, deviceId: DeviceId): Promise<number>;
  /**
   * Keeps a snapshot (signature already checked) if it covers more than the latest one and no
   * more than the log holds, then prunes log entries it covers that are older than
   * `retentionMs`. Resolves to the covered seq and how many entries were pruned.
   */
  putSnapshot(req: AppendRequest, now: number, retentionMs: number): Promise<SnapshotOutcome>;
  /** The latest snapshot of a user's document, if any. */
  getSnapshot(userId: UserId, docId: DocId): Promise<SnapshotEntry | undefined>;
  /** The seq the latest snapshot covers (0 when none); cheap, reads no ciphertext. */
  snapshotBase(userId: UserId, docId: DocId): Promise<Seq>;
  /**
   * Revokes `revocation.device` (idempotent), a device of `revocation.user`; it is refused from
   * then on. The caller checked the signature against the key of `revocation.issuer`, which must
   * itself be a live device of the user (DEVICE_REVOKED otherwise). The revocation cascades, in
   * the same transaction, to the live devices the target registered, transitively — except those
   * still vouched for (or registered) by a device that stays live, and the issuer. Devices
   * enrolled by the user key or the recovery key are roots and never cascade. The signed record
   * is kept in the same transaction as what it cut off: for the target (replacing any record it
   * had) and for each device revoked with it, one record per device. Resolves to the target,
   * then every device revoked with it.
   */
  revokeDevice(revocation: Revocation, now: number): Promise<Result<DeviceRecord[]>>;
  /**
   * The signed records a revoked device's revocation stands on, for it to believe: the revocation
   * that cut it off (its own, or for a device a revocation took with it by cascade, the one of
   * the device it hung from) and the user's latest reset if it was revoked at or before that
   * reset (which did not keep it). Empty for live devices and devices revoked before the relay
   * kept records.
   */
  revocationRecords(deviceId: DeviceId): Promise<RevocationRecords>;
  /** The distinct signed revocations kept for the user's devices: the `limit` newest, oldest first. */
  listRevocations(userId: UserId, limit: number): Promise<Revocation[]>;
  /** The user's recovery key, reset generation and escrow; undefined for unknown users and users without one. */
  getRecovery(userId: UserId): Promise<UserRecovery | undefined>;
  /** The user whose first device named this recovery public key, if any. */
  findRecoveryUser(recoveryKey: Uint8Array): Promise<UserRecovery | undefined>;
  /**
   * Applies a reset whose signature the caller verified against the user's recovery key, in one
   * transaction: its generation must be the user's last + 1 (RECOVERY_REPLAYED), it registers
   * `enrol` (issuer 'recovery', one of `keep`) if new, within `limits`; every device in `keep`
   * must be the user's (RECOVERY_INVALID) and is live afterwards (a revocation kept for it is
   * dropped); every other device is revoked. The reset is kept with the user (`UserRecovery.reset`).
   */
  applyRecoveryReset(reset: RecoveryReset, enrol: RecoveryEnrolment | undefined, now: number, limits: DeviceLimits): Promise<Result<ResetOutcome>>;
  /**
   * Keeps a vouch: a certificate a live device of the user (`cert.issuer`) signed for another
   * registered, live device of the user. At most `maxPerDevice` issuers vouch for one device
   * (LIMIT_EXCEEDED); the same issuer vouching again replaces its vouch.
   */
  putVouch(cert: DeviceCertificate, now: number, maxPerDevice: number): Promise<Result<DeviceCertificate>>;
  /** Every vouch kept for the user's devices. */
  listVouches(userId: UserId): Promise<DeviceCertificate[]>;
  /** Keeps a key-epoch record if its number is the next one for the user and the user has fewer than `maxEpochs`. */
  putEpoch(record: EpochRecord, now: number, maxEpochs: number): Promise<Result<EpochRecord>>;
  /** The user's `limit` most recent key-epoch records, oldest first. */
  listEpochs(userId: UserId, limit: number): Promise<EpochRecord[]>;
  /** The user's tier; undefined when nothing set one (the relay then applies the free tier). */
  getEntitlement(userId: UserId): Promise<EntitlementRecord | undefined>;
  /**
   * Sets the user's tier (the user need not have connected yet). `also` is written in the same
   * transaction (audit rows, payment bookkeeping); the whole write fails if `also.event` was
   * recorded before.
   */
  setEntitlement(userId: UserId, tier: TierName, now: number, source: string, also?: PaymentWrite): Promise<EntitlementRecord>;
  /** Writes a payment change without a tier change, in one transaction (same duplicate rule). */
  commitPayment(write: PaymentWrite, now: number): Promise<void>;
  /** Whether a payment event id was applied before. */
  paymentEventSeen(eventId: string): Promise<boolean>;
  getSubscription(subscriptionId: string): Promise<SubscriptionRecord | undefined>;
  /** Every subscription linked to the user, in subscription id order. */
  listSubscriptions(userId: UserId): Promise<SubscriptionRecord[]>;
  getGrace(userId: UserId): Promise<GraceRecord | undefined>;
  /** Every open grace period, earliest end first (scheduled again when the relay starts). */
  listGraces(): Promise<GraceRecord[]>;
  /** Payment failures recorded for the user at or after `since`. */
  countPaymentFailures(userId: UserId, since: number): Promise<number>;
  /** Appends audit rows in order, in one transaction, each chained to the one before. */
  appendAudit(drafts: readonly AuditDraft[], now: number): Promise<AuditRecord[]>;
  /** Audit rows with seq > `after`, in seq order, at most `limit`. */
  readAudit(after: number, limit: number): Promise<AuditRecord[]>;
  /**
   * Audit rows with `from <= at < to`, in (at, seq) order, after the row `after` (its at and seq:
   * keyset paging on the audit_by_time index), at most `limit`. `audit report` reads a window a page at a time.
   */
  readAuditWindow(from: number, to: number, after: { readonly at: number; readonly seq: number } | undefined, limit: number): Promise<AuditRecord[]>;
  /** Whether the relay holds a user (a first device of this user registered and was not deleted). */
  hasUser(userId: UserId): Promise<boolean>;
  /** Whether the operator deleted this user (and no import brought it back): its devices may not create it again. */
  isDeletedUser(userId: UserId): Promise<boolean>;
  /** Keeps a signup token's hash until `expiresAt` (ms); the token itself is never stored. */
  putSignupToken(tokenHash: string, expiresAt: number, now: number): Promise<void>;
  /**
   * Marks a signup token used, atomically: 'accepted' once per token, and only before it expires.
   */
  useSignupToken(tokenHash: string, now: number): Promise<SignupTokenOutcome>;
  /**
   * Keeps an external crisis signal for the user's devices (the same signal id again is
   * 'duplicate' and changes nothing); signals older than `retentionMs` and all but the newest
   * `maxPerUser` of the user go.
   */
  keepCrisisSignal(userId: UserId, signal: CrisisSignal, now: number, limits: CrisisSignalLimits): Promise<'stored' | 'duplicate'>;
  /** The user's kept crisis signals received at or after `since`, oldest first. */
  crisisSignals(userId: UserId, since: number): Promise<CrisisSignal[]>;
  /** Metered bytes the user stored on a UTC day (`YYYY-MM-DD`). */
  usage(userId: UserId, day: string): Promise<number>;
  /** Cheap liveness probe for health checks. */
  ping(): Promise<void>;
  close(): Promise<void>;
  /**
   * The deployment's relay id: the one kept, or else `candidate`, kept from now on (get-or-set,
   * atomic). Never changes once kept, so restarts (clean or killed) present the same id.
   */
  relayId(candidate: string): Promise<string>;
}
