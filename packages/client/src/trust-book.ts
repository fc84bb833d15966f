import {
  type DeviceCertificate,
  DeviceCertificateSchema,
  type DeviceId,
  DeviceIdSchema,
  type EpochRecord,
  MAX_EPOCH_RECIPIENTS,
  type RecoveryReset,
  RecoveryResetSchema,
  type Revocation,
  RevocationSchema,
  type UserId,
  WireLimits,
  checkCertificateIds,
  toB64,
  verifyCertificateSignature,
  verifyEpochRecord,
  verifyRecoveryReset,
  verifyRevocation,
} from '@keel/engine';
import * as z from 'zod';

/**
 * The durable trust book: what this device verified about its user's devices — certificates
 * (live and revoked, vouches included), signed revocations and the latest recovery reset. The
 * relay only delivers records; it never decides. Whatever arrives later only ADDS verified
 * records, so a revocation seen once wins over every certificate the relay sends afterwards,
 * and liveness is computed here, from the book alone.
 */

/** Stored form (ClientStore key ['client','trust']): only records that verified when added. */
export const StoredTrustBookSchema = z.strictObject({
  v: z.literal(1),
  certs: z.array(DeviceCertificateSchema).max(WireLimits.maxCertificates),
  revocations: z.array(RevocationSchema).max(WireLimits.maxCertificates),
  reset: RecoveryResetSchema.optional(),
});
export type StoredTrustBook = z.infer<typeof StoredTrustBookSchema>;

/** What a key epoch is known to have been shared with: its issuer and the devices it was sealed to. */
export const EpochMetaSchema = z.strictObject({
  issuer: DeviceIdSchema,
  holders: z.array(DeviceIdSchema).max(MAX_EPOCH_RECIPIENTS + 1),
  /** The record's time: a device linked after it may have been handed the secret in its grant. */
  issuedAt: z.number().int().min(0),
  /** The secret was sealed to the recovery key too: a device the recovery key enrolled may hold it. */
  recovery: z.boolean(),
});
export type EpochMeta = z.infer<typeof EpochMetaSchema>;

/** The anchors of trust a device holds itself: its user, its own keys, the user's recovery public key. */
export interface TrustAnchors {
  readonly user: UserId;
  readonly self: { readonly deviceId: DeviceId; readonly publicKey: Uint8Array };
  /** Verifies recovery-enrolled certificates and resets; without it neither ever counts. */
  readonly recoveryKey?: Uint8Array | undefined;
}

/** Liveness as computed from the book. */
export interface TrustView {
  /** Every device with a verified certificate chain, live or not (this device included): what they wrote verifies. */
  readonly authors: ReadonlyMap<DeviceId, Uint8Array>;
  /** Devices that may receive new key epochs: not revoked, chained from a root through live issuers. This device is always in. */
  readonly live: ReadonlyMap<DeviceId, Uint8Array>;
  /** Authors known to be revoked or cut off (never this device): their later writes are refused, epochs they hold are dirty. */
  readonly nonLive: ReadonlySet<DeviceId>;
  /** A verified record says this device is revoked (it still seals for itself; the app decides what to do). */
  readonly selfRevoked: boolean;
  /** The verified certificates the view was computed from. */
  readonly certs: readonly DeviceCertificate[];
}

/** What `add` took in, for the caller to persist and report. */
export interface AddResult {
  /** Some record verified and was new: persist the book, recompute what depends on it. */
  readonly changed: boolean;
  /** Verified records refused because the book is full (a user with more devices than the protocol allows). */
  readonly overflow: number;
}

/** Records waiting for their issuer's certificate; the oldest are forgotten first (they cost memory only). */
const MAX_PENDING = WireLimits.maxCertificates;
/** Verification results kept; past it the cache starts over (it is only a cost saving). */
const MAX_CACHED = 4 * WireLimits.maxCertificates * 4;

interface PendingCert {
  readonly cert: DeviceCertificate;
  readonly deviceKey: Uint8Array;
  readonly userKey: Uint8Array;
}

/** Everything a certificate's signature covers, so a cached verdict is for exactly these bytes. */
const certKey = (c: DeviceCertificate, issuerKey: Uint8Array): string =>
  ['c', c.sig, c.user, c.userKey, c.device, c.deviceKey, c.issuer ?? '', c.issuedAt, c.recoveryKey ?? '', toB64(issuerKey)].join('\n');
const revocationKey = (r: Revocation, issuerKey: Uint8Array): string => ['r', r.sig, r.user, r.device, r.issuer, r.at, toB64(issuerKey)].join('\n');
const recordKey = (r: EpochRecord, issuerKey: Uint8Array): string =>
  ['e', r.sig, r.user, r.epoch, r.issuer, r.issuedAt, r.recovery ?? '', toB64(issuerKey), ...r.wraps.flatMap((w) => [w.device, w.sealed])].join('\n');

/** A reset is newer if its generation is higher; equal generations are ordered by signature (deterministic). */
const newerReset = (a: RecoveryReset, b: RecoveryReset | undefined): boolean => !b || a.gen > b.gen || (a.gen === b.gen && a.sig > b.sig);

export class TrustBook {
  readonly #anchors: TrustAnchors;
  /** Verified certificates by signature (several per device: vouches). */
  readonly #certs = new Map<string, DeviceCertificate>();
  /** Device keys established by a verified certificate; this device's own key too. */
  readonly #keys = new Map<DeviceId, Uint8Array>();
  readonly #revocations = new Map<string, Revocation>();
  #reset: RecoveryReset | undefined;
  /** Certificates and revocations whose issuer this device cannot verify yet. */
  readonly #pendingCerts = new Map<string, PendingCert>();
  readonly #pendingRevocations = new Map<string, Revocation>();
  /** Verdicts by everything signed, so a record the relay repeats costs one map lookup, not a signature check. */
  readonly #verdicts = new Map<string, boolean>();
  #view: TrustView | undefined;
  #verifications = 0;

  constructor(anchors: TrustAnchors) {
    this.#anchors = anchors;
    this.#keys.set(anchors.self.deviceId, anchors.self.publicKey);
  }

  /**
   * Restores a stored book, verifying it again (a few ms for a full book). A stored form that
   * does not parse counts as empty: the relay's next `ready` fills it again with what verifies.
   */
  static restore(anchors: TrustAnchors, stored: unknown): TrustBook {
    const book = new TrustBook(anchors);
    const parsed = StoredTrustBookSchema.safeParse(stored);
    if (parsed.success) book.add({ certs: parsed.data.certs, revocations: parsed.data.revocations, ...(parsed.data.reset ? { reset: parsed.data.reset } : {}) });
    return book;
  }

  /** Signature checks made so far (the cache's effect is measurable). */
  get verifications(): number {
    return this.#verifications;
  }

  get reset(): RecoveryReset | undefined {
    return this.#reset;
  }

  /** The stored form: only verified records. */
  toStored(): StoredTrustBook {
    return {
      v: 1,
      certs: [...this.#certs.values()],
      revocations: [...this.#revocations.values()],
      ...(this.#reset ? { reset: this.#reset } : {}),
    };
  }

  /** The verified certificates of a device (first the one that registered it, then vouches). */
  certificatesOf(device: DeviceId): DeviceCertificate[] {
    return [...this.#certs.values()].filter((c) => c.device === device);
  }

  /**
   * Adds whatever verifies among `records`; nothing is ever removed. Records whose issuer is not
   * verified yet wait (bounded) until its certificate arrives, so the order in which the relay
   * delivers them does not matter.
   */
  add(records: { readonly certs?: readonly DeviceCertificate[]; readonly revocations?: readonly Revocation[]; readonly reset?: RecoveryReset | undefined }): AddResult {
    let changed = false;
    let overflow = 0;
    const { user, recoveryKey } = this.#anchors;
    if (records.reset && records.reset.user === user && recoveryKey && newerReset(records.reset, this.#reset)) {
      if (this.#check(['s', records.reset.sig, records.reset.gen, records.reset.at, ...records.reset.keep, toB64(recoveryKey)].join('\n'), () => verifyRecoveryReset(records.reset!, recoveryKey))) {
        this.#reset = records.reset;
        changed = true;
      }
    }
    for (const cert of records.certs ?? []) {
      if (cert.user !== user || this.#certs.has(cert.sig) || this.#pendingCerts.has(cert.sig)) continue;
      const ids = checkCertificateIds(cert);
      if (!ids.ok) continue;
      this.#remember(this.#pendingCerts, cert.sig, { cert, deviceKey: ids.value.deviceKey, userKey: ids.value.userKey });
    }
    for (const revocation of records.revocations ?? []) {
      if (revocation.user !== user || this.#revocations.has(revocation.sig)) continue;
      this.#remember(this.#pendingRevocations, revocation.sig, revocation);
    }
    // Certificates until nothing more verifies (a chain may arrive leaf first), then revocations.
    for (let progressed = true; progressed; ) {
      progressed = false;
      for (const [sig, pending] of this.#pendingCerts) {
        const { cert } = pending;
        const issuerKey = cert.issuer === null ? pending.userKey : cert.issuer === 'recovery' ? recoveryKey : this.#keys.get(cert.issuer);
        if (!issuerKey) continue;
        this.#pendingCerts.delete(sig);
        if (!this.#check(certKey(cert, issuerKey), () => verifyCertificateSignature(cert, issuerKey))) continue;
        if (this.#certs.size >= WireLimits.maxCertificates) {
          overflow++;
          continue;
        }
        this.#certs.set(sig, cert);
        if (!this.#keys.has(cert.device)) {
          this.#keys.set(cert.device, pending.deviceKey);
          progressed = true;
        }
        changed = true;
      }
    }
    for (const [sig, revocation] of this.#pendingRevocations) {
      const issuerKey = this.#keys.get(revocation.issuer);
      if (!issuerKey) continue;
      this.#pendingRevocations.delete(sig);
      if (!this.#check(revocationKey(revocation, issuerKey), () => verifyRevocation(revocation, issuerKey))) continue;
      if (this.#revocations.size >= WireLimits.maxCertificates) {
        overflow++;
        continue;
      }
      this.#revocations.set(sig, revocation);
      changed = true;
    }
    if (changed) this.#view = undefined;
    return { changed, overflow };
  }

  /** Whether a revocation verifies against an author of this user (without adding it). */
  verifiesRevocation(revocation: Revocation): boolean {
    const issuerKey = this.#keys.get(revocation.issuer);
    return revocation.user === this.#anchors.user && issuerKey !== undefined && this.#check(revocationKey(revocation, issuerKey), () => verifyRevocation(revocation, issuerKey));
  }

  /** An epoch record counts if its issuer is an author of this user and signed it. */
  verifiesEpoch(record: EpochRecord): boolean {
    const issuerKey = this.#keys.get(record.issuer);
    return record.user === this.#anchors.user && issuerKey !== undefined && this.#check(recordKey(record, issuerKey), () => verifyEpochRecord(record, issuerKey));
  }

  /** Liveness from the book alone (cached until the book changes). */
  view(): TrustView {
    this.#view ??= this.#compute();
    return this.#view;
  }

  #check(key: string, verify: () => boolean): boolean {
    const known = this.#verdicts.get(key);
    if (known !== undefined) return known;
    this.#verifications++;
    const verdict = verify();
    if (this.#verdicts.size >= MAX_CACHED) this.#verdicts.clear();
    this.#verdicts.set(key, verdict);
    return verdict;
  }

  #remember<T>(pool: Map<string, T>, sig: string, value: T): void {
    if (pool.size >= MAX_PENDING) pool.delete(pool.keys().next().value!);
    pool.set(sig, value);
  }

  #compute(): TrustView {
    const self = this.#anchors.self.deviceId;
    const reset = this.#reset;
    const keep = new Set<DeviceId>(reset?.keep ?? []);
    const certs = [...this.#certs.values()];
    // Under a reset every device it did not keep was revoked at its time: a certificate from
    // before then brings none of them back (only a new one, from a live device, after it).
    const usable = reset ? certs.filter((c) => keep.has(c.device) || c.issuedAt > reset.at) : certs;
    const byIssuer = new Map<string, DeviceId[]>();
    for (const c of usable) {
      if (c.issuer === null || c.issuer === 'recovery') continue;
      const list = byIssuer.get(c.issuer) ?? [];
      list.push(c.device);
      byIssuer.set(c.issuer, list);
    }
    const roots = reset
      ? [...keep].filter((d) => this.#keys.has(d))
      : [...new Set(usable.filter((c) => c.issuer === null || c.issuer === 'recovery').map((c) => c.device))];
    const liveUnder = (revoked: ReadonlySet<DeviceId>, survivors: ReadonlySet<DeviceId> = new Set()): Set<DeviceId> => {
      const live = new Set<DeviceId>();
      const queue = [...new Set([...roots, ...survivors])].filter((d) => !revoked.has(d));
      for (const d of queue) live.add(d);
      for (let i = 0; i < queue.length; i++) {
        for (const next of byIssuer.get(queue[i]!) ?? []) {
          if (live.has(next) || revoked.has(next)) continue;
          live.add(next);
          queue.push(next);
        }
      }
      return live;
    };
    const revoked = new Set<DeviceId>();
    // A revocation never takes the device that made it with it (the relay's cascade spares it
    // too): revoking a lost phone from the tablet it once linked leaves the tablet, and what the
    // tablet linked, live. Such a device stands as a root of its own — but only if it was live by
    // every other revocation, so a device cut off by someone else's cannot revive itself by
    // signing one.
    const survivors = new Set<DeviceId>();
    if (!reset) {
      // Any author may revoke (a thief too: telling the owner from a thief takes the recovery key).
      const all = [...this.#revocations.values()];
      for (const r of all) revoked.add(r.device);
      for (const issuer of new Set(all.map((r) => r.issuer))) {
        if (revoked.has(issuer)) continue;
        const others = new Set(all.filter((r) => r.issuer !== issuer).map((r) => r.device));
        if (liveUnder(others).has(issuer)) survivors.add(issuer);
      }
    } else {
      // Under a reset a revocation counts only from a device live under it, and a kept device
      // only by a revocation made after the reset. Taken in time order (then by signature), so
      // two devices revoking each other resolve the same way on every device.
      const candidates = [...this.#revocations.values()]
        .filter((r) => !keep.has(r.device) || r.at > reset.at)
        .sort((a, b) => a.at - b.at || (a.sig < b.sig ? -1 : a.sig > b.sig ? 1 : 0));
      let live = liveUnder(revoked);
      for (const r of candidates) {
        if (revoked.has(r.device) || !live.has(r.issuer)) continue;
        revoked.add(r.device);
        survivors.add(r.issuer);
        live = liveUnder(revoked, survivors);
      }
    }
    const liveSet = liveUnder(revoked, survivors);
    // Without revocations and resets every verified chain reaches a root, so a certified self
    // that is not live was cut off by a verified record (its own revocation, an issuer's, a reset).
    const selfRevoked = !liveSet.has(self) && [...this.#certs.values()].some((c) => c.device === self);
    const authors = new Map(this.#keys);
    const live = new Map<DeviceId, Uint8Array>();
    const nonLive = new Set<DeviceId>();
    for (const [device, key] of authors) {
      if (device === self || liveSet.has(device)) live.set(device, key);
      else nonLive.add(device);
    }
    return { authors, live, nonLive, selfRevoked, certs };
  }
}

/** The devices that hold an epoch's secret: its issuer and every device it was sealed to. */
export const epochMetaOf = (record: EpochRecord): EpochMeta => ({
  issuer: record.issuer,
  holders: [...new Set([record.issuer, ...record.wraps.map((w) => w.device)])],
  issuedAt: record.issuedAt,
  recovery: record.recovery !== undefined,
});

/**
 * Every device that may hold an epoch's secret: the record's holders, and — because a device
 * grant hands over every epoch its issuer holds, and the recovery key opens every epoch sealed
 * to it — each device certified after the record by a holder (or by the recovery key). A device
 * linked by an honest device whose clock runs behind the record's issuer is the one miss.
 */
export const epochHolders = (meta: EpochMeta, certs: readonly DeviceCertificate[]): Set<DeviceId> => {
  const holders = new Set(meta.holders);
  for (let grew = true; grew; ) {
    grew = false;
    for (const c of certs) {
      if (holders.has(c.device) || c.issuedAt < meta.issuedAt || c.issuer === null) continue;
      if (c.issuer === 'recovery' ? meta.recovery : holders.has(c.issuer)) {
        holders.add(c.device);
        grew = true;
      }
    }
  }
  return holders;
};

/**
 * Clean: no holder is known non-live. Without metadata (epoch 0, or a secret handed over with
 * no record seen) every device the book knows counts as a holder.
 */
export const isEpochClean = (meta: EpochMeta | undefined, view: TrustView): boolean => {
  const holders = meta ? epochHolders(meta, view.certs) : view.authors.keys();
  for (const h of holders) if (view.nonLive.has(h)) return false;
  return true;
};

/** The newest clean epoch among those held, or undefined: then this device must rotate before it writes. */
export const chooseWriteEpoch = (held: Iterable<readonly [number, EpochMeta | undefined]>, view: TrustView): number | undefined => {
  let best: number | undefined;
  for (const [epoch, meta] of held) if ((best === undefined || epoch > best) && isEpochClean(meta, view)) best = epoch;
  return best;
};
