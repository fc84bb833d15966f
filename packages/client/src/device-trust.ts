import {
  type ClientFrame,
  type DeviceCertificate,
  type DeviceId,
  type DocId,
  type EpochRecord,
  ErrorCode,
  type KeelError,
  MAX_EPOCH_RECIPIENTS,
  type Revocation,
  WireLimits,
  createEpochRecord,
  generateEpochSecret,
  openEpochRecord,
  signRevocation,
} from '@keel/engine';
import type { Identity } from './identity.js';
import { type HeldEpochs, KeyRing, parseStoredEpochs } from './keyring.js';
import type { ClientStore } from './storage/client-store.js';
import { decodeJson, encodeJson } from './sync/doc-meta.js';
import type { DocKeys } from './sync/doc-sync.js';
import { type TrustView, TrustBook, chooseWriteEpoch, epochMetaOf } from './trust-book.js';

const EPOCHS_KEY = ['client', 'epochs'];
const TRUST_KEY = ['client', 'trust'];

/** What the device's trust needs from the client around it. */
export interface DeviceTrustDeps {
  readonly identity: Identity;
  readonly store: ClientStore;
  /** Sends a frame on the authenticated link (false, and nothing sent, when there is none). */
  readonly send: (frame: ClientFrame) => boolean;
  /** The link is authenticated and the client open: a rotation can be published. */
  readonly online: () => boolean;
  /** Some open document has local changes waiting to be sealed. */
  readonly hasPending: () => boolean;
  /** The set of live devices changed. */
  readonly onDevices: () => void;
  /** These devices are not live (revoked, or cut off with one): freeze them as authors. */
  readonly onNonLive: (devices: ReadonlySet<DeviceId>) => void;
  /** A clean key to write under is here (again): changes that waited for one may be sealed. */
  readonly onWriteKey: () => void;
  readonly onError: (error: KeelError) => void;
}

/** A rotation published and not yet echoed by the relay. */
interface Rotation {
  readonly epoch: number;
  readonly echoed: Promise<void>;
  readonly done: () => void;
}

/** What a device kept of its trust: the trust book's and the key ring's stored forms. */
export interface StoredTrust {
  readonly epochs: HeldEpochs;
  readonly book: unknown;
}

/**
 * The device's own judgement of whom to trust, kept durably (docs/device-trust.md): the trust
 * book of signed certificates, revocations and resets; the key ring of epochs with who holds
 * each; and which epoch new writes go under — the newest no revoked device holds, or one this
 * device rotates to. The relay only delivers records here; every one is verified, and none
 * is ever taken back.
 */
export class DeviceTrust {
  readonly #deps: DeviceTrustDeps;
  readonly #book: TrustBook;
  readonly #keyring: KeyRing;
  /** Highest epoch a live issuer numbered (ours included): a rotation goes above it. */
  #epochHigh: number;
  #rotation: Rotation | undefined;
  /** Storage writes of the book and the ring, in order (the last state wins). */
  #writes: Promise<void> = Promise.resolve();
  /** The live set last announced, to announce only changes. */
  #announcedLive: string;

  static async load(store: ClientStore): Promise<StoredTrust> {
    const [epochs, book] = await Promise.all([store.load(EPOCHS_KEY), store.load(TRUST_KEY)]);
    return { epochs: epochs ? parseStoredEpochs(decodeJson(epochs)) : {}, book: book ? decodeJson(book) : undefined };
  }

  constructor(deps: DeviceTrustDeps, stored: StoredTrust = { epochs: {}, book: undefined }) {
    this.#deps = deps;
    const { user, device, recoveryKey, chain, cert, epochs } = deps.identity;
    // Epochs a linking device handed over come without records: every device the book knows holds them.
    const granted = Object.fromEntries(Object.entries(epochs ?? {}).map(([epoch, secret]) => [epoch, { secret }]));
    this.#keyring = new KeyRing(user.rootKey, { ...granted, ...stored.epochs });
    this.#epochHigh = this.#keyring.newest;
    this.#book = TrustBook.restore({ user: user.userId, self: device, recoveryKey }, stored.book);
    // The identity's own chain: this device verifies its issuers even before the relay answers.
    this.#book.add({ certs: [...chain, cert] });
    this.#announcedLive = liveKey(this.#book.view());
  }

  get view(): TrustView {
    return this.#book.view();
  }

  /** Whether this device holds a verified record that revokes it. */
  get selfRevoked(): boolean {
    return this.#book.view().selfRevoked;
  }

  /** Whether a clean epoch is chosen for writing. */
  get canWrite(): boolean {
    return this.#keyring.writeEpoch !== undefined;
  }

  /** One document's keys: the write epoch's for sealing, any held epoch's for opening. */
  keysFor(docId: DocId): DocKeys {
    return this.#keyring.forDoc(docId);
  }

  /** Every epoch secret after the first, for a linking grant. */
  exportEpochs(): Record<string, string> {
    return this.#keyring.export();
  }

  certificateOf(device: DeviceId): DeviceCertificate | undefined {
    return device === this.#deps.identity.device.deviceId ? this.#deps.identity.cert : this.#book.certificatesOf(device)[0];
  }

  /** The user's live devices as this device verified them (one certificate each), this one included. */
  devices(): DeviceCertificate[] {
    const out: DeviceCertificate[] = [];
    for (const device of this.#book.view().live.keys()) {
      const cert = this.certificateOf(device);
      if (cert) out.push(cert);
    }
    return out;
  }

  /**
   * Adds what verifies (nothing is ever removed), then, if anything was new: persists the book,
   * freezes authors that are no longer live, announces the live devices and picks the epoch to
   * write under again (rotating when none is clean). Returns whether anything was new.
   */
  add(records: Parameters<TrustBook['add']>[0], chooseEpoch = true): boolean {
    const { changed, overflow } = this.#book.add(records);
    if (overflow > 0) {
      this.#deps.onError({ code: ErrorCode.LIMIT_EXCEEDED, message: `${overflow} verified device records did not fit in the trust book (at most ${WireLimits.maxCertificates} of each)` });
    }
    if (!changed) return false;
    const view = this.#book.view();
    this.#persist(TRUST_KEY, () => this.#book.toStored(), 'the trust book');
    this.#deps.onNonLive(view.nonLive);
    const live = liveKey(view);
    if (live !== this.#announcedLive) {
      this.#announcedLive = live;
      this.#deps.onDevices();
    }
    if (chooseEpoch) this.chooseWriteEpoch();
    return true;
  }

  /**
   * Takes epoch records: opens those sealed to this device (any verified epoch may be read),
   * records who holds each, and settles a rotation the relay echoed. Returns true if a secret
   * was new.
   */
  adoptEpochs(records: readonly EpochRecord[]): boolean {
    let adopted = false;
    let described = false;
    for (const record of records) {
      // Records of since-revoked issuers count for reading; their holders make them dirty for writing.
      if (!this.#book.verifiesEpoch(record)) {
        this.#deps.onError({ code: ErrorCode.BAD_SIGNATURE, message: `key epoch ${record.epoch} is not signed by a device of this user` });
        continue;
      }
      // A revoked issuer's number is not taken as the floor for the next rotation: a relay could
      // show a thief's record numbered at the schema's maximum, leaving no number to rotate to.
      if (!this.#book.view().nonLive.has(record.issuer)) this.#epochHigh = Math.max(this.#epochHigh, record.epoch);
      const opened = openEpochRecord(record, this.#deps.identity.device);
      if (opened.ok) {
        const meta = epochMetaOf(record);
        if (this.#keyring.add(record.epoch, opened.value, meta)) adopted = true;
        else described = this.#keyring.describe(record.epoch, opened.value, meta) || described;
      }
      // Ours came back (or another device took that number first): the rotation is over.
      if (this.#rotation && record.epoch === this.#rotation.epoch) this.#endRotation();
    }
    if (adopted || described) this.#persist(EPOCHS_KEY, () => this.#keyring.toStored(), 'key epochs');
    this.chooseWriteEpoch();
    return adopted;
  }

  /**
   * Writes go under the newest clean epoch this device holds (no holder known non-live). With
   * none, this device rotates once it has something to write (or revokes): a new epoch sealed
   * only to live devices (and the recovery key), used once the relay echoed it; until then
   * local changes stay pending. Rotating lazily lets the revoking device's epoch arrive first,
   * instead of every device racing it for the same number.
   */
  chooseWriteEpoch(): void {
    const before = this.#keyring.writeEpoch;
    const epoch = chooseWriteEpoch(this.#keyring.held(), this.#book.view());
    this.#keyring.useForWriting(epoch);
    if (epoch === undefined) {
      if (this.#deps.hasPending()) this.rotate();
      return;
    }
    if (epoch !== before) this.#deps.onWriteKey();
  }

  /** Publishes a new epoch sealed only to live devices, unless one is on its way already. */
  rotate(): void {
    if (this.#rotation || !this.#deps.online()) return;
    const { user, device: me, recoveryKey } = this.#deps.identity;
    const epoch = Math.max(this.#keyring.newest, this.#epochHigh) + 1;
    // Live devices only (this one always); more than a record can name is refused by the relay anyway.
    const recipients = new Map([...this.#book.view().live].slice(0, MAX_EPOCH_RECIPIENTS));
    recipients.set(me.deviceId, me.publicKey);
    const record = createEpochRecord(user.userId, epoch, me, generateEpochSecret(), recipients, Date.now(), recoveryKey);
    let done = () => {};
    const echoed = new Promise<void>((resolve) => (done = resolve));
    this.#rotation = { epoch, echoed, done };
    this.#epochHigh = Math.max(this.#epochHigh, epoch);
    this.#deps.send({ type: 'epoch', record });
  }

  /**
   * The relay refused our epoch number (another device published it first, both having seen the
   * same revocation): its record reaches this device too, and the next decision takes it or
   * rotates above it. Returns whether a rotation was waiting.
   */
  rotationRefused(): boolean {
    if (!this.#rotation) return false;
    this.#endRotation();
    return true;
  }

  /** A new connection: a rotation the last one did not see echoed is decided again from what this one says. */
  onReady(): void {
    this.#endRotation();
  }

  /**
   * This device revokes `device`: the signed revocation goes to the relay first, then it is
   * believed here at once (the book computes the cascade; epochs the revoked devices held turn
   * dirty) and a rotation to the remaining live devices starts. Returns the rotation, if one did.
   */
  revoke(device: DeviceId): { readonly epoch: number; readonly echoed: Promise<void> } | undefined {
    const { user, device: me } = this.#deps.identity;
    const revocation: Revocation = signRevocation(user.userId, device, me, Date.now());
    this.#deps.send({ type: 'revoke', revocation });
    this.add({ revocations: [revocation] });
    if (!this.canWrite) this.rotate();
    return this.#rotation;
  }

  /** The epoch new writes go under (or the newest held, when none is clean yet). */
  get writeEpoch(): number {
    return this.#keyring.writeEpoch ?? this.#keyring.newest;
  }

  /** Waits for every storage write of the book and the ring; ends a rotation still waiting. */
  async close(): Promise<void> {
    this.#endRotation();
    await this.#writes;
  }

  #endRotation(): void {
    const rotation = this.#rotation;
    this.#rotation = undefined;
    rotation?.done();
  }

  #persist(key: readonly string[], what: () => unknown, name: string): void {
    this.#writes = this.#writes
      .then(() => this.#deps.store.save([...key], encodeJson(what())))
      .catch((error: unknown) => {
        this.#deps.onError({ code: ErrorCode.INTERNAL, message: `cannot store ${name}: ${error instanceof Error ? error.message : String(error)}` });
      });
  }
}

const liveKey = (view: TrustView): string => [...view.live.keys()].sort().join(' ');
