import {
  type ClientFrame,
  CloseCode,
  type DeviceId,
  type DeviceCertificate,
  type DocId,
  type Envelope,
  type EpochRecord,
  type Revocation,
  type EnvelopeKind,
  ErrorCode,
  type HelloFrame,
  type KeelError,
  type PushFrame,
  type RelayFrame,
  type Seq,
  type TierState,
  type UserId,
  PROTOCOL_VERSION,
  b64ByteLength,
  isCrisisLane,
  WireLimits,
  createChallengeNonce,
  encodeFrame,
  type RawFrame,
  readClientFrame,
  validateClientFrame,
  verifyChallenge,
  verifyEnvelopeSignature,
  verifyEpochRecord,
  verifyRevocation,
} from '@keel/engine';
import type { WebSocket } from 'ws';
import { type VerifiedCertificate, verifyPresentedCertificate } from '../auth/registration.js';
import type { ServingConfig } from '../config.js';
import type { Entitlements } from '../entitlements/entitlements.js';
import type { QuotaGuard, QuotaRefusal } from '../entitlements/quota.js';
import type { Logger } from '../log.js';
import type { AppendRequest, DeviceRecord, LogEntry, RelayStore } from '../storage/relay-store.js';
import type { CommitQueue } from './commit-queue.js';
import type { PairingRegistry } from './pairing.js';
import { OutboundQueue } from './outbound-queue.js';
import type { WorkOwner, WorkQueue } from './work-queue.js';

/** What a connection needs from the relay around it. */
export interface ConnectionContext {
  readonly config: ServingConfig;
  readonly store: RelayStore;
  readonly commits: CommitQueue;
  readonly entitlements: Entitlements;
  readonly quota: QuotaGuard;
  /** Bulk work, run in slices between I/O. */
  readonly work: WorkQueue;
  readonly log: Logger;
  now(): number;
  /** Called once the device has authenticated. */
  attach(conn: RelayConnection): void;
  detach(conn: RelayConnection): void;
  /** Newly committed entries of a user's document, for that user's other connections. */
  fanOut(origin: RelayConnection, docId: DocId, entries: readonly LogEntry[]): void;
  /** A device was registered; tell the user's other connections. */
  announceDevice(origin: RelayConnection, device: DeviceRecord): void;
  readonly pairings: PairingRegistry<RelayConnection>;
  /** Sends a frame to every authenticated connection of a user but `except`. */
  toUser(user: UserId, frame: RelayFrame, lane: number, except?: RelayConnection): void;
  /** Closes every connection of a revoked device at once. */
  disconnectDevice(device: DeviceId): void;
}

type State =
  | { readonly kind: 'hello' }
  | {
      readonly kind: 'challenged';
      readonly hello: HelloFrame;
      readonly nonce: string;
      readonly publicKey: Uint8Array;
      /** Certificates to register once the device proves its key, issuers first. */
      readonly pending: readonly VerifiedCertificate[];
    }
  | { readonly kind: 'ready'; readonly user: UserId; readonly device: DeviceRecord; tier: TierState }
  /** A new device that joined with a pairing code and waits for its grant. */
  | { readonly kind: 'pairing'; readonly id: string }
  | { readonly kind: 'closed' };

/** Delivery state of one subscribed document on this connection. */
interface Subscription {
  /** While catching up, live fan-out is parked here and sent after the backlog. */
  parked: LogEntry[] | null;
  /** Highest seq sent; anything at or below it is not sent again. */
  sent: number;
}

const CATCH_UP_PAGE = WireLimits.maxEnvelopesPerFrame;
/**
 * Ciphertext characters per `updates` frame. Frames are the unit the outbound queue reorders:
 * a crisis frame can overtake queued frames but not one already in the socket, so bulk is cut
 * into frames small enough to pass quickly.
 */
const FRAME_CHARS = 192 * 1024;

/** Splits entries into frames of at most CATCH_UP_PAGE entries and about FRAME_CHARS of ciphertext. */
const toFrames = (entries: readonly LogEntry[]): LogEntry[][] => {
  const frames: LogEntry[][] = [];
  let current: LogEntry[] = [];
  let chars = 0;
  for (const entry of entries) {
    if (current.length > 0 && (current.length >= CATCH_UP_PAGE || chars + entry.env.ct.length > FRAME_CHARS)) {
      frames.push(current);
      current = [];
      chars = 0;
    }
    current.push(entry);
    chars += entry.env.ct.length;
  }
  if (current.length > 0) frames.push(current);
  return frames;
};

/** Whether an unvalidated push names a crisis lane for any envelope (full validation follows). */
const claimsCrisisLane = (raw: RawFrame): boolean => {
  const envs = raw.json.envs;
  return Array.isArray(envs) && envs.some((env: unknown) => typeof env === 'object' && env !== null && Number((env as { lane?: unknown }).lane) >= 9);
};

const maxLane = (entries: readonly { env: { lane: number } }[]): number => entries.reduce((m, e) => Math.max(m, e.env.lane), 1);

/** One device's WebSocket: handshake, then subscriptions, pushes and deliveries. */
export class RelayConnection {
  readonly #ws: WebSocket;
  readonly #ctx: ConnectionContext;
  readonly #out: OutboundQueue;
  readonly #subs = new Map<DocId, Subscription>();
  readonly #authTimer: NodeJS.Timeout;
  #state: State = { kind: 'hello' };
  #badFrames = 0;
  /** Handshake and subscription frames are handled one at a time, in arrival order. */
  #chain: Promise<void> = Promise.resolve();
  /** This connection as a source of queued bulk work. */
  readonly #owner: WorkOwner;

  constructor(ws: WebSocket, ctx: ConnectionContext) {
    this.#ws = ws;
    this.#ctx = ctx;
    this.#out = new OutboundQueue(ws);
    this.#authTimer = setTimeout(() => {
      this.#fail({ code: ErrorCode.AUTH_TIMEOUT, message: `not authenticated within ${ctx.config.authTimeoutMs} ms` }, CloseCode.AUTH_TIMEOUT);
    }, ctx.config.authTimeoutMs);
    this.#owner = { pause: () => ws.pause(), resume: () => ws.resume() };
    ws.on('message', (data, isBinary) => {
      try {
        this.#onMessage(isBinary ? new Uint8Array(data as Buffer) : (data as Buffer).toString('utf8'));
      } catch (error) {
        this.#internal(error);
      }
    });
    ws.on('close', () => this.#teardown());
    ws.on('error', (error) => {
      ctx.log.log('warn', 'socket error', { error: error.message });
    });
  }

  get #closed(): boolean {
    return this.#state.kind === 'closed';
  }

  get user(): UserId | undefined {
    return this.#state.kind === 'ready' ? this.#state.user : undefined;
  }

  get device(): DeviceId | undefined {
    return this.#state.kind === 'ready' ? this.#state.device.deviceId : undefined;
  }

  /** The user's tier changed: enforce it from now on and tell the device at once. */
  setTier(tier: TierState): void {
    if (this.#state.kind !== 'ready') return;
    const wasCrossDevice = this.#state.tier.policy.crossDevice;
    this.#state.tier = tier;
    this.send({ type: 'tier', tier }, 10);
    if (!wasCrossDevice && tier.policy.crossDevice) {
      this.#ctx.log.log('info', 'cross-device sync enabled', { user: this.#state.user, device: this.device });
    }
  }

  /** Queues a frame at a priority lane; crisis lanes overtake everything queued. */
  send(frame: RelayFrame, lane: number): void {
    if (this.#state.kind === 'closed') return;
    this.#out.enqueue(lane, encodeFrame(frame));
  }

  /** Live entries of a document this connection may be subscribed to. */
  deliver(docId: DocId, entries: readonly LogEntry[]): void {
    const sub = this.#subs.get(docId);
    if (!sub) return;
    if (sub.parked) {
      sub.parked.push(...entries);
      return;
    }
    this.#sendEntries(docId, sub, entries);
  }

  /**
   * Whether this device may receive an entry: always its own and crisis lanes; other devices'
   * entries only when the tier has cross-device sync (otherwise the relay only backs them up).
   */
  #visible(entry: Pick<LogEntry, 'env'>): boolean {
    if (this.#state.kind !== 'ready') return false;
    return this.#state.tier.policy.crossDevice || isCrisisLane(entry.env.lane) || entry.env.device === this.#state.device.deviceId;
  }

  close(code: number, reason: string): void {
    if (this.#state.kind === 'closed') return;
    // A socket paused for flooding must read again, or the peer's close frame is never seen.
    this.#ws.resume();
    this.#ws.close(code, reason);
    this.#teardown();
  }

  #sendEntries(docId: DocId, sub: Subscription, entries: readonly LogEntry[]): void {
    const fresh = entries.filter((e) => e.seq > sub.sent);
    if (fresh.length === 0) return;
    const visible = fresh.filter((e) => this.#visible(e));
    const withheld = fresh.filter((e) => !this.#visible(e)).map((e) => e.seq);
    for (const page of toFrames(visible)) {
      this.send({ type: 'updates', doc: docId, items: page.map((e) => ({ seq: e.seq, env: e.env })) }, maxLane(page));
    }
    for (let i = 0; i < withheld.length; i += CATCH_UP_PAGE) {
      this.send({ type: 'withheld', doc: docId, seqs: withheld.slice(i, i + CATCH_UP_PAGE) }, 1);
    }
    sub.sent = fresh[fresh.length - 1]!.seq;
  }

  /**
   * Every frame is parsed as it arrives. Pushes of an authenticated device are routed by lane
   * (crisis at once, bulk through the relay's work queue); everything else is handled in order
   * on this connection's chain.
   */
  #onMessage(data: string | Uint8Array): void {
    if (this.#state.kind === 'closed') return;
    const raw = readClientFrame(data, this.#ctx.config.maxPayloadBytes);
    if (!raw.ok) {
      this.#badFrame(raw.error);
      return;
    }
    // A bulk push of an authenticated device is queued as read: its validation, like the rest
    // of its work, waits for its turn, so a flood costs the event loop little per frame.
    if (raw.value.type === 'push' && this.#state.kind === 'ready' && !claimsCrisisLane(raw.value)) {
      const rawPush = raw.value;
      this.#ctx.work.enqueue(this.#owner, () => {
        const frame = validateClientFrame(rawPush);
        if (!frame.ok) this.#badFrame(frame.error);
        else if (frame.value.type === 'push') this.#push(frame.value, false);
      });
      return;
    }
    const parsed = validateClientFrame(raw.value);
    if (!parsed.ok) {
      this.#badFrame(parsed.error);
      return;
    }
    const frame = parsed.value;
    if (frame.type === 'push' && this.#state.kind === 'ready') {
      this.#routePush(frame);
      return;
    }
    this.#chain = this.#chain.then(() => this.#receive(frame)).catch((error: unknown) => this.#internal(error));
  }

  async #receive(frame: ClientFrame): Promise<void> {
    switch (this.#state.kind) {
      case 'closed':
        return;
      case 'hello':
        if (frame.type === 'pair-join') return this.#onPairJoin(frame);
        if (frame.type !== 'hello') return this.#badFrame({ code: ErrorCode.NOT_AUTHENTICATED, message: `"${frame.type}" before hello` });
        return this.#onHello(frame);
      case 'pairing':
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: `"${frame.type}" while waiting for a pairing grant` });
      case 'challenged':
        if (frame.type !== 'auth') return this.#badFrame({ code: ErrorCode.NOT_AUTHENTICATED, message: `"${frame.type}" before auth` });
        return this.#onAuth(frame.sig, this.#state);
      case 'ready':
        return this.#onReady(frame);
    }
  }

  /**
   * Crisis pushes are verified and committed at once, ahead of all queued bulk work (after this
   * connection's own queued frames, which must not be overtaken). Bulk pushes wait their turn
   * in the relay's work queue, which yields to I/O between slices.
   */
  #routePush(frame: PushFrame): void {
    if (frame.envs.some((env) => isCrisisLane(env.lane))) {
      this.#ctx.work.runQueuedOf(this.#owner);
      this.#push(frame, true);
    } else {
      this.#ctx.work.enqueue(this.#owner, () => this.#push(frame, false));
    }
  }

  async #onHello(hello: HelloFrame): Promise<void> {
    if (hello.v !== PROTOCOL_VERSION) {
      return this.#fail(
        { code: ErrorCode.UNSUPPORTED_VERSION, message: `protocol v${hello.v} is not supported; this relay speaks v${PROTOCOL_VERSION}` },
        CloseCode.UNSUPPORTED_VERSION,
      );
    }
    const known = await this.#ctx.store.getDevice(hello.device);
    let publicKey: Uint8Array;
    let pending: readonly VerifiedCertificate[] = [];
    if (known) {
      if (known.userId !== hello.user) return this.#authFailed(hello, 'device belongs to another user');
      if (known.revokedAt !== null) {
        return this.#fail({ code: ErrorCode.DEVICE_REVOKED, message: 'this device was revoked' }, CloseCode.DEVICE_REVOKED);
      }
      publicKey = known.publicKey;
    } else if (hello.cert) {
      const verified = await verifyPresentedCertificate(this.#ctx.store, hello.cert, hello.chain ?? [], hello.user, hello.device);
      if (!verified.ok) return this.#authFailed(hello, verified.error.message, verified.error.code);
      publicKey = verified.value[verified.value.length - 1]!.deviceKey;
      pending = verified.value;
    } else {
      return this.#authFailed(hello, 'unknown device and no certificate', ErrorCode.UNKNOWN_DEVICE);
    }
    const nonce = createChallengeNonce();
    this.#state = { kind: 'challenged', hello, nonce, publicKey, pending };
    this.send({ type: 'challenge', v: PROTOCOL_VERSION, relay: this.#ctx.config.relayId, nonce }, 10);
  }

  async #onAuth(sig: string, state: Extract<State, { kind: 'challenged' }>): Promise<void> {
    const { hello, nonce, publicKey, pending } = state;
    if (!verifyChallenge(this.#ctx.config.relayId, nonce, hello.user, hello.device, sig, publicKey)) {
      return this.#authFailed(hello, 'challenge signature does not verify');
    }
    // Registered only now that the device proved it holds the certified key.
    const registeredNow: DeviceRecord[] = [];
    for (const link of pending) {
      const registered = await this.#ctx.store.registerDevice(link.cert, link.deviceKey, link.userKey, this.#ctx.now());
      if (!registered.ok) return this.#authFailed(hello, registered.error.message, registered.error.code);
      registeredNow.push(registered.value);
      this.#ctx.log.log('info', 'device registered', { user: registered.value.userId, device: registered.value.deviceId, issuer: link.cert.issuer });
    }
    const device = await this.#ctx.store.getDevice(hello.device);
    if (!device || device.revokedAt !== null) return this.#authFailed(hello, 'device is no longer registered', ErrorCode.DEVICE_REVOKED);
    const tier = await this.#ctx.entitlements.tierOf(hello.user);
    await this.#ctx.quota.warm(hello.user);
    // The socket may have closed during the awaits above.
    if (this.#closed) return;
    clearTimeout(this.#authTimer);
    this.#state = { kind: 'ready', user: hello.user, device, tier };
    const certs = (await this.#ctx.store.listDevices(hello.user)).filter((d) => d.revokedAt === null).map((d) => d.cert);
    const epochs = await this.#ctx.store.listEpochs(hello.user);
    this.send(
      {
        type: 'ready',
        user: hello.user,
        device: hello.device,
        certs: certs.slice(-WireLimits.maxCertificates),
        tier,
        ...(epochs.length > 0 ? { epochs: epochs.slice(-64) } : {}),
      },
      10,
    );
    this.#ctx.attach(this);
    for (const registered of registeredNow) this.#ctx.announceDevice(this, registered);
    this.#ctx.log.log('info', 'device connected', { user: hello.user, device: hello.device });
  }

  async #onReady(frame: ClientFrame): Promise<void> {
    switch (frame.type) {
      case 'hello':
      case 'auth':
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: `"${frame.type}" after authentication` });
      case 'sub':
        for (const { doc, after } of frame.docs) await this.#subscribe(doc, after);
        return;
      case 'unsub':
        for (const doc of frame.docs) this.#subs.delete(doc);
        return;
      case 'push':
        return this.#routePush(frame);
      case 'pair-join':
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: 'pair-join is for new devices, before authentication' });
      case 'pair-open':
      case 'pair-grant':
      case 'pair-refuse':
        return this.#onPairing(frame);
      case 'register':
        return this.#onRegister(frame.cert);
      case 'revoke':
        return this.#onRevoke(frame.revocation);
      case 'epoch':
        return this.#onEpoch(frame.record);
    }
  }

  /** A new device joins with a pairing code: the issuing device is asked, the relay only forwards. */
  #onPairJoin(frame: Extract<ClientFrame, { type: 'pair-join' }>): void {
    if (frame.v !== PROTOCOL_VERSION) {
      return this.#fail({ code: ErrorCode.UNSUPPORTED_VERSION, message: `protocol v${frame.v} is not supported` }, CloseCode.UNSUPPORTED_VERSION);
    }
    const joined = this.#ctx.pairings.join(frame.id, this);
    if (!joined.ok) {
      this.#ctx.log.log('warn', 'pairing refused', { code: joined.error.code });
      return this.#fail(joined.error, CloseCode.PAIRING_FAILED);
    }
    this.#state = { kind: 'pairing', id: frame.id };
    // The auth timer keeps running: a pairing that is not granted in time ends like a silent socket.
    joined.value.issuer.send({ type: 'pair-request', id: frame.id, deviceKey: frame.deviceKey, proof: frame.proof }, 10);
  }

  async #onPairing(frame: Extract<ClientFrame, { type: 'pair-open' | 'pair-grant' | 'pair-refuse' }>): Promise<void> {
    const user = this.user;
    if (!user) return;
    if (frame.type === 'pair-open') {
      const opened = this.#ctx.pairings.open(frame.id, user, this, frame.ttlMs);
      if (!opened.ok) return this.#badFrame(opened.error);
      this.send({ type: 'pair-opened', id: frame.id, expiresAt: opened.value.expiresAt }, 10);
      return;
    }
    const session = this.#ctx.pairings.take(frame.id, this);
    if (!session.ok) return this.#badFrame(session.error);
    const joiner = session.value.joiner;
    if (!joiner) return;
    if (frame.type === 'pair-grant') {
      this.#ctx.log.log('info', 'pairing granted', { user, device: this.device });
      joiner.grantAndClose(frame);
    } else {
      joiner.close(CloseCode.PAIRING_FAILED, ErrorCode.PAIRING_REFUSED);
    }
  }

  /** Sends the sealed grant to a joining device, then ends its pairing connection. */
  grantAndClose(frame: Extract<RelayFrame, { type: 'pair-grant' }>): void {
    if (this.#state.kind !== 'pairing') return;
    this.#ws.send(encodeFrame(frame), () => this.#ws.close(CloseCode.PAIRED, 'PAIRED'));
    this.#teardown();
  }

  /** An authenticated device registers a device it (or another live device of the user) certified. */
  async #onRegister(cert: DeviceCertificate): Promise<void> {
    const user = this.user;
    if (!user) return;
    const verified = await verifyPresentedCertificate(this.#ctx.store, cert, [], user, cert.device);
    if (!verified.ok || cert.issuer === null) {
      return this.#badFrame({ code: ErrorCode.BAD_CERTIFICATE, message: verified.ok ? 'a registered user adds devices by device certificates' : verified.error.message });
    }
    const link = verified.value[verified.value.length - 1]!;
    const registered = await this.#ctx.store.registerDevice(link.cert, link.deviceKey, link.userKey, this.#ctx.now());
    if (!registered.ok) return this.#badFrame(registered.error);
    this.#ctx.log.log('info', 'device registered', { user, device: registered.value.deviceId, issuer: cert.issuer });
    this.#ctx.announceDevice(this, registered.value);
    this.send({ type: 'device', cert: registered.value.cert }, 10);
  }

  /** A live device revokes another device of the same user: refused from now on, cut off at once. */
  async #onRevoke(revocation: Revocation): Promise<void> {
    const state = this.#state;
    if (state.kind !== 'ready') return;
    if (revocation.user !== state.user || revocation.issuer !== state.device.deviceId || !verifyRevocation(revocation, state.device.publicKey)) {
      this.#countAbuse();
      return this.#badFrame({ code: ErrorCode.BAD_SIGNATURE, message: 'a revocation must be signed by this device, for its own user' });
    }
    const revoked = await this.#ctx.store.revokeDevice(state.user, revocation.device, this.#ctx.now());
    if (!revoked.ok) return this.#badFrame(revoked.error);
    this.#ctx.log.log('info', 'device revoked', { user: state.user, device: revocation.device, by: state.device.deviceId });
    this.#ctx.disconnectDevice(revocation.device);
    this.#ctx.toUser(state.user, { type: 'revoked', device: revocation.device }, 10);
  }

  /** A new key epoch, sealed to the devices that keep access; every online device gets it at once. */
  async #onEpoch(record: EpochRecord): Promise<void> {
    const state = this.#state;
    if (state.kind !== 'ready') return;
    if (record.user !== state.user || record.issuer !== state.device.deviceId || !verifyEpochRecord(record, state.device.publicKey)) {
      this.#countAbuse();
      return this.#badFrame({ code: ErrorCode.BAD_SIGNATURE, message: 'an epoch record must be signed by this device, for its own user' });
    }
    const stored = await this.#ctx.store.putEpoch(record, this.#ctx.now());
    if (!stored.ok) return this.#badFrame(stored.error);
    this.#ctx.log.log('info', 'key epoch stored', { user: state.user, epoch: record.epoch, by: state.device.deviceId });
    this.#ctx.toUser(state.user, { type: 'epoch', record }, 10);
  }

  async #subscribe(docId: DocId, after: Seq): Promise<void> {
    const user = this.user;
    if (!user) return;
    const owner = await this.#ctx.store.docOwner(docId);
    if (owner !== undefined && owner !== user) {
      this.#ctx.log.log('warn', 'subscribe refused', { user, device: this.device, code: ErrorCode.NOT_AUTHORIZED });
      this.send({ type: 'error', code: ErrorCode.NOT_AUTHORIZED, message: 'document belongs to another user', doc: docId }, 10);
      return;
    }
    const sub: Subscription = { parked: [], sent: after };
    this.#subs.set(docId, sub);
    // A device behind the latest snapshot starts from it: the log it covers may be pruned.
    const snapshot = await this.#ctx.store.getSnapshot(docId);
    if (this.#subs.get(docId) !== sub) return;
    const base = snapshot?.env.base ?? 0;
    if (snapshot && after < base) {
      if (this.#visible(snapshot)) {
        this.send({ type: 'snapshot', doc: docId, env: snapshot.env }, snapshot.env.lane);
        sub.sent = base;
      } else {
        // Not this device's to read on this tier: what the log no longer holds counts as withheld.
        this.send({ type: 'withheld', doc: docId, seqs: [], through: base as Seq }, 1);
      }
    }
    // Page through the backlog; live entries committed meanwhile wait in `parked`.
    for (;;) {
      const page = await this.#ctx.store.readLog(docId, sub.sent as Seq, CATCH_UP_PAGE);
      if (this.#subs.get(docId) !== sub) return;
      this.#sendEntries(docId, sub, page);
      if (page.length < CATCH_UP_PAGE) break;
    }
    const parked = sub.parked ?? [];
    sub.parked = null;
    this.#sendEntries(docId, sub, parked);
    this.send({ type: 'synced', doc: docId, seq: sub.sent as Seq }, 10);
  }

  /** Checks a push's envelopes now (synchronously, so frames keep their order) and commits them. */
  #push(frame: PushFrame, urgent: boolean): void {
    const state = this.#state;
    if (state.kind !== 'ready') return;
    const accepted: AppendRequest[] = [];
    const snapshots: { env: Envelope; day: string; bytes: number }[] = [];
    // Once one envelope of a document is deferred, later ones of that document in this frame
    // are deferred with it: they must not overtake it, and a counter gap would be misleading.
    const deferred = new Map<DocId, QuotaRefusal>();
    const policy = state.tier.policy;
    for (const env of frame.envs) {
      let error: QuotaRefusal | undefined = deferred.get(env.doc);
      if (!error && env.device !== state.device.deviceId) {
        error = { code: ErrorCode.WRONG_AUTHOR, message: 'a device may push only envelopes it authored' };
        this.#countAbuse();
      }
      const bytes = isCrisisLane(env.lane) ? 0 : b64ByteLength(env.ct.length);
      let day: string | undefined;
      if (!error) {
        // Quota before signature: a deferral costs the relay no signature check.
        const reservation = this.#ctx.quota.reserve(state.user, policy, env.lane, bytes);
        if ('code' in reservation) {
          error = reservation;
          deferred.set(env.doc, reservation);
        } else {
          day = reservation.day;
        }
      }
      if (!error && !verifyEnvelopeSignature(env, state.device.publicKey)) {
        error = { code: ErrorCode.BAD_SIGNATURE, message: `envelope #${env.counter} is not signed by this device` };
        if (day !== undefined && bytes > 0) this.#ctx.quota.refund(state.user, policy, day, bytes);
        // An honest device never sends these: they count against the bad-frame budget.
        this.#countAbuse();
      }
      if (error) {
        this.#reject(env.doc, env.counter, error, env.kind);
      } else if (env.kind === 'snapshot') {
        snapshots.push({ env, day: day!, bytes });
      } else {
        accepted.push(bytes > 0 ? { userId: state.user, env, meter: { day: day!, bytes } } : { userId: state.user, env });
      }
    }
    if (snapshots.length > 0) this.#storeSnapshots(snapshots, state).catch((error: unknown) => this.#internal(error));
    if (accepted.length === 0) return;
    this.#commit(accepted, state, urgent).catch((error: unknown) => this.#internal(error));
  }

  /**
   * Keeps a snapshot if it covers more than the relay's latest, and prunes the log it covers
   * (past the retention window). Snapshots are not fanned out: devices get them on catch-up.
   */
  async #storeSnapshots(snapshots: readonly { env: Envelope; day: string; bytes: number }[], state: Extract<State, { kind: 'ready' }>): Promise<void> {
    for (const { env, day, bytes } of snapshots) {
      const outcome = await this.#ctx.store.putSnapshot({ userId: state.user, env }, this.#ctx.now(), this.#ctx.config.snapshotRetentionMs);
      if (outcome.status === 'rejected') {
        if (bytes > 0) this.#ctx.quota.refund(state.user, state.tier.policy, day, bytes);
        this.#reject(env.doc, env.counter, outcome.error, 'snapshot');
        continue;
      }
      this.#ctx.log.log('info', 'snapshot stored', { user: state.user, device: state.device.deviceId, base: env.base, pruned: outcome.pruned });
      this.send({ type: 'ack', acks: [{ doc: env.doc, counter: env.counter, seq: outcome.seq, kind: 'snapshot' }] }, 1);
    }
  }

  async #commit(
    accepted: readonly AppendRequest[],
    state: Extract<State, { kind: 'ready' }>,
    urgent: boolean,
  ): Promise<void> {
    const policy = state.tier.policy;
    const outcomes = await this.#ctx.commits.submit(accepted, urgent);
    const acks: { doc: DocId; counter: number; seq: Seq }[] = [];
    const stored = new Map<DocId, LogEntry[]>();
    let ackLane = 1;
    const receivedAt = this.#ctx.now();
    outcomes.forEach((outcome, i) => {
      const { env } = accepted[i]!;
      // The metered reservation of an envelope that was not stored is given back.
      const meter = accepted[i]!.meter;
      if (outcome.status !== 'stored' && meter) this.#ctx.quota.refund(state.user, policy, meter.day, meter.bytes);
      if (outcome.status === 'rejected') {
        this.#reject(env.doc, env.counter, outcome.error);
        return;
      }
      acks.push({ doc: env.doc, counter: env.counter, seq: outcome.seq });
      ackLane = Math.max(ackLane, env.lane);
      if (outcome.status === 'stored') {
        const list = stored.get(env.doc) ?? [];
        list.push({ seq: outcome.seq, env, receivedAt });
        stored.set(env.doc, list);
      }
    });
    if (acks.length > 0) this.send({ type: 'ack', acks }, ackLane);
    for (const [docId, entries] of stored) {
      // The author has these already; its own subscription must not send them back.
      const own = this.#subs.get(docId);
      if (own && own.parked === null) own.sent = Math.max(own.sent, entries[entries.length - 1]!.seq);
      this.#ctx.fanOut(this, docId, entries);
    }
  }

  #reject(doc: DocId, counter: number, error: QuotaRefusal, kind: EnvelopeKind = 'update'): void {
    const deferral = error.retryAfterMs !== undefined;
    this.#ctx.log.log(deferral ? 'info' : 'warn', deferral ? 'envelope deferred' : 'envelope rejected', {
      user: this.user,
      device: this.device,
      code: error.code,
    });
    this.send(
      {
        type: 'reject',
        doc,
        counter,
        code: error.code,
        message: error.message,
        ...(deferral ? { retryAfterMs: error.retryAfterMs! } : {}),
        ...(kind === 'snapshot' ? { kind } : {}),
      },
      10,
    );
  }

  #badFrame(error: KeelError): void {
    this.#ctx.log.log('warn', 'bad frame', { user: this.user, device: this.device, code: error.code, count: this.#badFrames + 1 });
    this.send({ type: 'error', code: error.code, message: error.message }, 10);
    this.#countAbuse();
  }

  /** Bad frames and forged envelopes over the connection's life; past the limit it is closed. */
  #countAbuse(): void {
    this.#badFrames++;
    if (this.#badFrames >= this.#ctx.config.maxBadFrames) {
      this.#fail({ code: ErrorCode.TOO_MANY_ERRORS, message: `${this.#badFrames} bad frames` }, CloseCode.PROTOCOL_ABUSE);
    }
  }

  #authFailed(hello: HelloFrame, message: string, code: ErrorCode = ErrorCode.AUTH_FAILED): void {
    this.#ctx.log.log('warn', 'authentication failed', { user: hello.user, device: hello.device, code });
    this.#fail({ code, message }, CloseCode.AUTH_FAILED);
  }

  /** Sends a final error frame, then closes once it is written. */
  #fail(error: KeelError, closeCode: number): void {
    if (this.#state.kind === 'closed') return;
    this.#ws.send(encodeFrame({ type: 'error', code: error.code, message: error.message }), () => {
      this.#ws.close(closeCode, error.code);
    });
    this.#teardown();
  }

  #internal(error: unknown): void {
    this.#ctx.log.log('error', 'internal error', { user: this.user, device: this.device, error: error instanceof Error ? error.message : String(error) });
    this.#fail({ code: ErrorCode.INTERNAL, message: 'internal relay error; retry' }, CloseCode.INTERNAL_ERROR);
  }

  #teardown(): void {
    if (this.#state.kind === 'closed') return;
    const wasReady = this.#state.kind === 'ready';
    this.#state = { kind: 'closed' };
    clearTimeout(this.#authTimer);
    this.#out.close();
    this.#ctx.work.forget(this.#owner);
    for (const session of this.#ctx.pairings.dropAll(this)) {
      // The issuer went away: the joining device's attempt ends.
      if (session.issuer === this) session.joiner?.close(CloseCode.PAIRING_FAILED, ErrorCode.PAIRING_NOT_FOUND);
    }
    this.#subs.clear();
    if (wasReady) this.#ctx.detach(this);
  }
}
