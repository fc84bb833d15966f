import type { DeviceCertificate, DeviceId, DocId, Envelope, KeelError, Result, Seq, TierName, UserId } from '@keel/engine';

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

export type AppendOutcome =
  | { readonly status: 'stored'; readonly seq: Seq }
  /** The same envelope (same author, counter and signature) was stored before. */
  | { readonly status: 'duplicate'; readonly seq: Seq }
  | { readonly status: 'rejected'; readonly error: KeelError };

/**
 * The relay's durable state: users, devices and per-document ciphertext logs. The relay keeps
 * nothing in memory that a second node could not rebuild from here. Implementations: SQLite
 * (embedded default); a PostgreSQL one must pass the same conformance suite.
 */
export interface RelayStore {
  getDevice(deviceId: DeviceId): Promise<DeviceRecord | undefined>;
  listDevices(userId: UserId): Promise<DeviceRecord[]>;
  /**
   * Registers a device whose certificate the caller verified. A certificate issued by the user
   * key (`issuer: null`) is accepted only for a user with no devices yet; the check and the
   * insert are one transaction, so two racing "first devices" cannot both win.
   */
  registerDevice(cert: DeviceCertificate, publicKey: Uint8Array, userKey: Uint8Array, now: number): Promise<Result<DeviceRecord>>;
  /** The owner of a document, or undefined if nobody has written it yet. */
  docOwner(docId: DocId): Promise<UserId | undefined>;
  /**
   * Appends envelopes in order, in one transaction, and returns one outcome per request.
   * Checks, per envelope: the document belongs to the user, and the counter is the author's
   * last + 1 for that document. Resolves only after the transaction is durable.
   */
  append(batch: readonly AppendRequest[], now: number): Promise<AppendOutcome[]>;
  /** Log entries of a document with seq > `after`, in seq order, at most `limit`. */
  readLog(docId: DocId, after: Seq, limit: number): Promise<LogEntry[]>;
  /** Highest seq of a document's log (0 when empty). */
  headSeq(docId: DocId): Promise<Seq>;
  /** The user's tier; undefined when nothing set one (the relay then applies the free tier). */
  getEntitlement(userId: UserId): Promise<EntitlementRecord | undefined>;
  /** Sets the user's tier (the user need not have connected yet). */
  setEntitlement(userId: UserId, tier: TierName, now: number, source: string): Promise<EntitlementRecord>;
  /** Metered bytes the user stored on a UTC day (`YYYY-MM-DD`). */
  usage(userId: UserId, day: string): Promise<number>;
  /** Cheap liveness probe for health checks. */
  ping(): Promise<void>;
  close(): Promise<void>;
}
