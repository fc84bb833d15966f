import {
  type AwarenessFrame,
  type ClientFrame,
  CloseCode,
  type DeviceId,
  type DocId,
  ErrorCode,
  type HelloFrame,
  type KeelError,
  PROTOCOL_VERSION,
  type RecoveryReset,
  type RelayFrame,
  type TierState,
  type UserId,
  WireLimits,
  createChallengeNonce,
  encodeFrame,
  fromB64,
  isCrisisLane,
  readClientFrame,
  toB64,
  validateClientFrame,
  verifyChallenge,
  verifyRecoveryReset,
} from '@keel/engine';
import type { WebSocket } from 'ws';
import { createDeviceVerifier } from '../auth/ed25519.js';
import { type VerifiedCertificate, verifyPresentedCertificate } from '../auth/registration.js';
import { admitSignup } from '../auth/signup-tokens.js';
import type { ServingConfig } from '../config.js';
import type { CrisisLane } from '../entitlements/crisis-lane.js';
import type { Entitlements } from '../entitlements/entitlements.js';
import type { QuotaGuard } from '../entitlements/quota.js';
import type { Logger } from '../log.js';
import type { DeviceRecord, LogEntry, RelayStore } from '../storage/relay-store.js';
import { type AwarenessDrop, type AwarenessLimits, AwarenessGate } from './awareness-gate.js';
import type { CommitQueue } from './commit-queue.js';
import { Delivery } from './delivery.js';
import { DeviceAdmin, type PairingPeer, deviceLimits } from './device-admin.js';
import { setFrameLimit } from './frame-limit.js';
import { Ingest } from './ingest.js';
import { OutboundQueue } from './outbound-queue.js';
import type { PairingRegistry } from './pairing.js';
import { type RevokedFrame, revokedNotice } from './revoked-notice.js';
import type { WorkOwner, WorkQueue } from './work-queue.js';

/** How every awareness frame of Keel's client begins (JSON.stringify of `{ type: 'awareness', aw }`). */
const AWARENESS_PREFIX = Buffer.from('{"type":"awareness"');

/** How long a closed socket may take to finish the close handshake before it is cut. */
const CLOSE_GRACE_MS = 1_000;
/** Key epochs sent in `ready`: the most recent ones (older ones protect only older writes). */
const READY_EPOCHS = 64;
/**
 * Characters of epoch records one `ready` carries at most. A device reads at most 1 MiB before
 * `ready` (WireLimits.defaultMaxFrameBytes); the rest of a `ready` — certificates, revoked
 * certificates, revocations, 256 of each at most — stays under ~300 KiB, so the records get what
 * is left with room to spare. An epoch sealed to many devices is large (~260 characters per
 * wrap): with 256 devices per user only the newest few fit.
 */
const READY_EPOCH_CHARS = 512 * 1024;

/** The newest records (in epoch order) that fit READY_EPOCH_CHARS. */
const fitEpochs = <T>(records: readonly T[]): T[] => {
  const kept: T[] = [];
  let chars = 0;
  for (let i = records.length - 1; i >= 0; i--) {
    chars += JSON.stringify(records[i]).length;
    if (chars > READY_EPOCH_CHARS) break;
    kept.unshift(records[i]!);
  }
  return kept;
};

/** What a connection needs from the relay around it. */
export interface ConnectionContext {
  readonly config: ServingConfig;
  readonly store: RelayStore;
  readonly commits: CommitQueue;
  readonly entitlements: Entitlements;
  readonly quota: QuotaGuard;
  readonly crisis: CrisisLane;
  /** Everything that costs CPU, run in fair, bounded slices between I/O. */
  readonly work: WorkQueue;
  readonly log: Logger;
  now(): number;
  /** The device authenticated; false when its user already has as many connections as allowed. */
  attach(conn: RelayConnection): boolean;
  detach(conn: RelayConnection): void;
  /** The connection left the unauthenticated state (authenticated, paired or closed). */
  leftPreAuth(conn: RelayConnection): void;
  /** Newly committed entries of a user's document, for that user's other connections. */
  fanOut(origin: RelayConnection, docId: DocId, entries: readonly LogEntry[]): void;
  /**
   * An awareness frame this connection's device sent (validated, its own, for a document it is
   * subscribed to): for the user's other devices subscribed to that document. Never stored.
   */
  forwardAwareness(origin: RelayConnection, doc: DocId, frame: string): void;
  /** Awareness bounds (rate per connection, recipient queue). */
  readonly awarenessLimits: AwarenessLimits;
  /** An awareness frame was dropped: counted in memory, never logged one by one. */
  awarenessDropped(reason: AwarenessDrop): void;
  /** A device was registered; tell the user's other connections. */
  announceDevice(origin: RelayConnection, device: DeviceRecord): void;
  readonly pairings: PairingRegistry<PairingPeer>;
  /** Sends a frame to every authenticated connection of a user but `except`. */
  toUser(user: UserId, frame: RelayFrame, lane: number, except?: RelayConnection): void;
  /** Cuts off every connection of a revoked device of `user` at once (4003), each after `notice` when there is one. */
  cutOffDevice(user: UserId, device: DeviceId, notice: RevokedFrame | undefined): void;
  /**
   * Devices of `user` were revoked: each is sent its notice (the signed record it stands on) and
   * cut off (4003), and the user's other connections get the same notices, in order.
   */
  devicesRevoked(user: UserId, notices: readonly RevokedFrame[]): void;
}

/** An authenticated device and what serves it. */
interface Session {
  readonly user: UserId;
  readonly device: DeviceRecord;
  tier: TierState;
  readonly ingest: Ingest;
  readonly delivery: Delivery;
  readonly admin: DeviceAdmin;
  readonly awareness: AwarenessGate;
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
      /** A reset (signature and generation checked) to apply once the device proves its key. */
      readonly recovery: RecoveryReset | undefined;
    }
  | { readonly kind: 'ready'; readonly session: Session }
  /** A new device that joined with a pairing code and waits for its grant. */
  | { readonly kind: 'pairing'; readonly id: string }
  | { readonly kind: 'closed' };

/**
 * One device's WebSocket. Before authentication it accepts frames of a few KiB and reads only
 * `hello`, `auth` and `pair-join` (anything else is answered, never acted on); the handshake's
 * certificate and signature checks run in the work queue. After `ready` its frames go to the
 * modules along an update's route: pushes to Ingest, subscriptions to Delivery, device changes
 * to DeviceAdmin — each bounded, each in the work queue.
 */
export class RelayConnection implements PairingPeer {
  readonly #ws: WebSocket;
  readonly #ctx: ConnectionContext;
  readonly #out: OutboundQueue;
  readonly #authTimer: NodeJS.Timeout;
  #state: State = { kind: 'hello' };
  #badFrames = 0;
  #helloSeen = false;
  #authSeen = false;
  #closeTimer: NodeJS.Timeout | undefined;
  /** The frame being read is awareness already admitted by the rate check on its raw bytes. */
  #admitted = false;
  /** Reading is paused by this many holders (the work queue's backlog, an awareness flood). */
  #pauses = 0;
  /** Ends the pause of an awareness flood. */
  #floodTimer: NodeJS.Timeout | undefined;
  /** This connection as a source of queued work; its group is its user once authenticated. */
  #owner: WorkOwner;

  constructor(ws: WebSocket, ctx: ConnectionContext) {
    this.#ws = ws;
    this.#ctx = ctx;
    setFrameLimit(ws, ctx.config.preAuthMaxBytes);
    this.#out = new OutboundQueue(ws, 256 * 1024, {
      maxQueuedChars: ctx.config.maxOutboundBytes,
      lowWaterChars: 512 * 1024,
      onOverflow: () => this.#slowConsumer(),
      onRoom: () => {
        if (this.#state.kind === 'ready') this.#state.session.delivery.onRoom();
      },
    });
    this.#authTimer = setTimeout(() => {
      this.#fail({ code: ErrorCode.AUTH_TIMEOUT, message: `not authenticated within ${ctx.config.authTimeoutMs} ms` }, CloseCode.AUTH_TIMEOUT);
    }, ctx.config.authTimeoutMs);
    this.#owner = this.#ownerFor(this);
    ws.on('message', (data, isBinary) => {
      try {
        if (!isBinary && this.#awarenessOverRate(data as Buffer)) return;
        this.#onMessage(isBinary ? new Uint8Array(data as Buffer) : (data as Buffer).toString('utf8'));
      } catch (error) {
        this.#internal(error);
      }
    });
    ws.on('close', () => {
      clearTimeout(this.#closeTimer);
      this.#teardown();
    });
    ws.on('error', (error) => {
      // ws closes the socket itself (1009 for a frame over the limit, 1002 for a protocol
      // error) but waits up to 30 s for the peer's close frame: let go of everything now, and
      // cut the socket soon, so such sockets do not pile up.
      ctx.log.log('warn', 'socket error', { user: this.user, device: this.device, error: error.message });
      clearTimeout(this.#closeTimer);
      this.#closeTimer = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
      this.#teardown();
    });
  }

  #ownerFor(group: unknown): WorkOwner {
    return { group, pause: () => this.#pauseReading(), resume: () => this.#resumeReading() };
  }

  #pauseReading(): void {
    if (this.#pauses++ === 0) this.#ws.pause();
  }

  #resumeReading(): void {
    if (this.#pauses > 0 && --this.#pauses === 0) this.#ws.resume();
  }

  /** Awareness past the rate: counted; a peer that keeps at it has its socket paused a while. */
  #awarenessOverRateDropped(session: Session): void {
    this.#ctx.awarenessDropped('RATE_LIMITED');
    if (this.#floodTimer !== undefined || !session.awareness.flooding()) return;
    this.#pauseReading();
    this.#floodTimer = setTimeout(() => {
      this.#floodTimer = undefined;
      this.#resumeReading();
    }, this.#ctx.awarenessLimits.floodPauseMs);
  }

  get user(): UserId | undefined {
    return this.#state.kind === 'ready' ? this.#state.session.user : undefined;
  }

  get device(): DeviceId | undefined {
    return this.#state.kind === 'ready' ? this.#state.session.device.deviceId : undefined;
  }

  /** The user's tier changed: enforce it from now on and tell the device at once. */
  setTier(tier: TierState): void {
    if (this.#state.kind !== 'ready') return;
    const session = this.#state.session;
    const wasCrossDevice = session.tier.policy.crossDevice;
    session.tier = tier;
    this.send({ type: 'tier', tier }, 10);
    if (!wasCrossDevice && tier.policy.crossDevice) {
      this.#ctx.log.log('info', 'cross-device sync enabled', { user: session.user, device: this.device });
    }
  }

  /** Queues a frame at a priority lane; crisis lanes overtake everything queued. */
  send(frame: RelayFrame, lane: number): void {
    if (this.#state.kind === 'closed') return;
    this.#out.enqueue(lane, encodeFrame(frame));
  }

  /** Whether this connection's device is subscribed to `doc` now. */
  isSubscribed(doc: DocId): boolean {
    return this.#state.kind === 'ready' && this.#state.session.delivery.has(doc);
  }

  /**
   * Offers an awareness frame (already encoded) to this connection: lowest lane, and dropped
   * rather than queued when the connection is backed up or its tier has no cross-device sync.
   * Returns why it was dropped, or undefined once it is queued.
   */
  offerAwareness(frame: string): AwarenessDrop | undefined {
    if (this.#state.kind !== 'ready') return 'BACKED_UP';
    if (!this.#state.session.tier.policy.crossDevice) return 'TIER';
    return this.#out.offer(1, frame, this.#ctx.awarenessLimits.maxRecipientQueueChars) ? undefined : 'BACKED_UP';
  }

  /** Live entries of a document this connection may be subscribed to. */
  deliver(docId: DocId, entries: readonly LogEntry[]): void {
    if (this.#state.kind === 'ready') this.#state.session.delivery.deliver(docId, entries);
  }

  close(code: number, reason: string): void {
    if (this.#state.kind === 'closed') return;
    this.#closeSocket(code, reason);
    this.#teardown();
  }

  /**
   * This connection's device was revoked: it is sent `notice` (the signed records its revocation
   * stands on, so it can believe the close) and then closed with 4003. Without a notice (revoked
   * before the relay kept records) it gets the close alone.
   */
  cutOff(notice: RevokedFrame | undefined): void {
    if (this.#state.kind === 'closed') return;
    const close = () => this.#closeSocket(CloseCode.DEVICE_REVOKED, ErrorCode.DEVICE_REVOKED);
    // Straight to the socket, past frames still queued: they are no use to a revoked device.
    if (notice) this.#ws.send(encodeFrame(notice), close);
    else close();
    this.#teardown();
  }

  /** Sends the sealed grant to a joining device, then ends its pairing connection. */
  grantAndClose(frame: Extract<RelayFrame, { type: 'pair-grant' }>): void {
    if (this.#state.kind !== 'pairing') return;
    this.#ws.send(encodeFrame(frame), () => this.#closeSocket(CloseCode.PAIRED, 'PAIRED'));
    this.#teardown();
  }

  // ── reading frames ───────────────────────────────────────────────────────────────────────

  /**
   * Awareness past the connection's rate is dropped (and counted) before its bytes are even
   * decoded: Keel's client writes `{"type":"awareness"` first, so a flood costs a prefix
   * comparison per frame, not a parse. One within the rate goes on to be read and validated.
   */
  #awarenessOverRate(data: Buffer): boolean {
    if (this.#state.kind !== 'ready' || !data.subarray(0, AWARENESS_PREFIX.length).equals(AWARENESS_PREFIX)) return false;
    if (this.#state.session.awareness.admit(data.length)) {
      this.#admitted = true;
      return false;
    }
    this.#awarenessOverRateDropped(this.#state.session);
    return true;
  }

  #onMessage(data: string | Uint8Array): void {
    // Taken for this frame only, whatever becomes of it.
    const admitted = this.#admitted;
    this.#admitted = false;
    const state = this.#state;
    if (state.kind === 'closed') return;
    if (state.kind !== 'ready') return this.#onPreAuth(data, state);
    const raw = readClientFrame(data, this.#ctx.config.maxPayloadBytes);
    if (!raw.ok) return this.#badFrame(raw.error);
    const { session } = state;
    // A push is only read here; its validation and checks wait for their turn in the queue.
    if (raw.value.type === 'push') return session.ingest.onPush(raw.value, data.length);
    if (raw.value.type === 'awareness' && !admitted) {
      // Awareness not written the way Keel's client writes it (`type` first) and over the rate:
      // it cost a parse, so it counts against the bad-frame budget too.
      if (!session.awareness.admit(data.length)) {
        this.#awarenessOverRateDropped(session);
        return this.#countAbuse();
      }
    }
    const parsed = validateClientFrame(raw.value);
    if (!parsed.ok) return this.#badFrame(parsed.error);
    const frame = parsed.value;
    switch (frame.type) {
      case 'ping':
        // Answered at once, ahead of bulk frames: it measures the link, not the queue.
        return this.send({ type: 'pong', id: frame.id }, 10);
      case 'awareness':
        return this.#onAwareness(session, frame);
      case 'sub':
        return session.delivery.subscribe(frame.docs);
      case 'unsub':
        return session.delivery.unsubscribe(frame.docs);
      case 'register':
      case 'revoke':
      case 'epoch':
      case 'vouch':
      case 'pair-open':
      case 'pair-grant':
      case 'pair-refuse':
        return this.#queue(() => session.admin.handle(frame));
      case 'hello':
      case 'auth':
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: `"${frame.type}" after authentication` });
      case 'pair-join':
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: 'pair-join is for new devices, before authentication' });
      case 'recovery-find':
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: 'recovery-find is for devices being recovered, before authentication' });
      case 'push':
        return;
      default:
        return assertNever(frame);
    }
  }

  /**
   * Awareness from this device: its own, for a document it is subscribed to, on a tier with
   * cross-device sync (presence must not open a path between devices that the tier closes, and
   * a cursor points into content the other device would not have). Forwarded as it came, never
   * stored; what is refused is counted and dropped, with no answer (it is ephemeral).
   */
  #onAwareness(session: Session, frame: AwarenessFrame): void {
    const { doc, device } = frame.aw;
    if (device !== session.device.deviceId) {
      return this.#badFrame({ code: ErrorCode.WRONG_AUTHOR, message: 'awareness must be sealed by the device that sends it' });
    }
    if (!session.delivery.has(doc)) return this.#ctx.awarenessDropped('NOT_SUBSCRIBED');
    if (!session.tier.policy.crossDevice) return this.#ctx.awarenessDropped('TIER');
    // Encoded again from the validated frame: exactly its schema's fields go on.
    this.#ctx.forwardAwareness(this, doc, encodeFrame(frame));
  }

  /**
   * Before authentication: frames of at most `preAuthMaxBytes` (the socket refuses larger ones
   * at their header, 1009), one `hello` (or `pair-join`) and one `auth`, each validated and
   * handled in the work queue. Anything else is answered and counted, never acted on.
   */
  #onPreAuth(data: string | Uint8Array, state: Exclude<State, { kind: 'ready' | 'closed' }>): void {
    const raw = readClientFrame(data, this.#ctx.config.preAuthMaxBytes);
    if (!raw.ok) return this.#badFrame(raw.error);
    const type = raw.value.type;
    if (state.kind === 'pairing') {
      return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: `"${type}" while waiting for a pairing grant` });
    }
    const expected = !this.#helloSeen ? type === 'hello' || type === 'pair-join' || type === 'recovery-find' : type === 'auth' && !this.#authSeen;
    if (!expected) return this.#badFrame({ code: ErrorCode.NOT_AUTHENTICATED, message: `"${type.slice(0, 32)}" before authentication` });
    const parsed = validateClientFrame(raw.value);
    if (!parsed.ok) return this.#badFrame(parsed.error);
    const frame = parsed.value;
    if (frame.type === 'auth') this.#authSeen = true;
    else this.#helloSeen = true;
    this.#queue(() => this.#handshake(frame));
  }

  /** Runs a step in the work queue, in order with this connection's other steps. */
  #queue(step: () => Promise<void>): void {
    this.#ctx.work.enqueue(this.#owner, async () => {
      if (this.#state.kind === 'closed') return;
      try {
        await step();
      } catch (error) {
        this.#internal(error);
      }
    });
  }

  // ── the handshake ────────────────────────────────────────────────────────────────────────

  async #handshake(frame: ClientFrame): Promise<void> {
    const state = this.#state;
    if (frame.type === 'pair-join') return this.#onPairJoin(frame);
    if (frame.type === 'recovery-find') return this.#onRecoveryFind(frame);
    if (frame.type === 'hello' && state.kind === 'hello') return this.#onHello(frame);
    if (frame.type === 'auth' && state.kind === 'challenged') return this.#onAuth(frame.sig, state);
    return this.#badFrame({ code: ErrorCode.NOT_AUTHENTICATED, message: `"${frame.type}" before hello` });
  }

  async #onHello(hello: HelloFrame): Promise<void> {
    if (hello.v !== PROTOCOL_VERSION) {
      return this.#fail(
        { code: ErrorCode.UNSUPPORTED_VERSION, message: `protocol v${hello.v} is not supported; this relay speaks v${PROTOCOL_VERSION}` },
        CloseCode.UNSUPPORTED_VERSION,
      );
    }
    const reset = hello.recovery;
    if (reset) {
      const refused = await this.#checkReset(hello, reset);
      if (refused) return this.#authFailed(hello, refused.message, refused.code);
    }
    const known = await this.#ctx.store.getDevice(hello.device);
    let publicKey: Uint8Array;
    let pending: readonly VerifiedCertificate[] = [];
    if (known) {
      if (known.userId !== hello.user) return this.#authFailed(hello, 'device belongs to another user');
      // A revoked device is challenged too: once it proves its key it is told why it is refused
      // (#refuseRevoked), and nobody else learns that of a device id. A reset that keeps a revoked
      // device reinstates it (a thief revoked the owner's phone).
      publicKey = known.publicKey;
    } else if (hello.cert) {
      if (reset && hello.cert.issuer !== 'recovery') {
        return this.#authFailed(hello, 'a reset enrols only a device certified by the recovery key', ErrorCode.RECOVERY_INVALID);
      }
      const verified = await verifyPresentedCertificate(this.#ctx.store, hello.cert, reset ? [] : hello.chain ?? [], hello.user, hello.device);
      if (!verified.ok) return this.#authFailed(hello, verified.error.message, verified.error.code);
      publicKey = verified.value[verified.value.length - 1]!.deviceKey;
      pending = verified.value;
    } else {
      return this.#authFailed(hello, 'unknown device and no certificate', ErrorCode.UNKNOWN_DEVICE);
    }
    if (this.#state.kind !== 'hello') return;
    const nonce = createChallengeNonce();
    this.#state = { kind: 'challenged', hello, nonce, publicKey, pending, recovery: reset };
    this.send({ type: 'challenge', v: PROTOCOL_VERSION, relay: this.#ctx.config.relayId, nonce }, 10);
  }

  async #onAuth(sig: string, state: Extract<State, { kind: 'challenged' }>): Promise<void> {
    const { hello, nonce, publicKey, pending, recovery } = state;
    const { store, config } = this.#ctx;
    if (!verifyChallenge(config.relayId, nonce, hello.user, hello.device, sig, publicKey)) {
      return this.#authFailed(hello, 'challenge signature does not verify');
    }
    // Registered (and a reset applied) only now that the device proved it holds the certified key.
    const registeredNow: DeviceRecord[] = [];
    if (recovery) {
      const applied = await this.#applyReset(hello, recovery, pending);
      if (!applied) return;
      registeredNow.push(...applied);
    } else {
      const refused = await admitSignup({ mode: config.registration, store, now: this.#ctx.now() }, hello, pending);
      if (refused) return this.#authFailed(hello, refused.message, refused.code);
      for (const link of pending) {
        const escrow = link.cert.issuer === null ? hello.escrow : undefined;
        const registered = await store.registerDevice(link.cert, link.deviceKey, link.userKey, this.#ctx.now(), deviceLimits(config), escrow);
        if (!registered.ok) return this.#authFailed(hello, registered.error.message, registered.error.code);
        registeredNow.push(registered.value);
        this.#ctx.log.log('info', 'device registered', { user: registered.value.userId, device: registered.value.deviceId, issuer: link.cert.issuer });
      }
    }
    const device = await store.getDevice(hello.device);
    if (!device) return this.#authFailed(hello, 'device is no longer registered', ErrorCode.DEVICE_REVOKED);
    if (device.revokedAt !== null) return this.#refuseRevoked(state, device);
    const tier = await this.#ctx.entitlements.tierOf(hello.user);
    await this.#ctx.quota.warm(hello.user);
    const devices = await store.listDevices(hello.user);
    const certs = devices.filter((d) => d.revokedAt === null).map((d) => d.cert);
    // Revoked devices' certificates too: what they wrote before their revocation still verifies.
    const revokedCerts = devices.filter((d) => d.revokedAt !== null).map((d) => d.cert);
    const epochs = fitEpochs(await store.listEpochs(hello.user, READY_EPOCHS));
    const revocations = await store.listRevocations(hello.user, WireLimits.maxCertificates);
    const userRecovery = await store.getRecovery(hello.user);
    const escrow = userRecovery?.escrow ?? null;
    // The socket may have closed during the awaits above.
    if (this.#state !== state) return;
    clearTimeout(this.#authTimer);
    this.#state = { kind: 'ready', session: this.#openSession(hello.user, device, tier) };
    this.#ctx.leftPreAuth(this);
    if (!this.#ctx.attach(this)) {
      return this.#fail(
        { code: ErrorCode.LIMIT_EXCEEDED, message: `this user has ${config.maxConnectionsPerUser} connections open, the most this relay allows` },
        CloseCode.TRY_AGAIN_LATER,
      );
    }
    setFrameLimit(this.#ws, config.maxPayloadBytes);
    this.send(
      {
        type: 'ready',
        user: hello.user,
        device: hello.device,
        certs: certs.slice(-WireLimits.maxCertificates),
        tier,
        ...(epochs.length > 0 ? { epochs } : {}),
        limits: { maxFrameBytes: config.maxPayloadBytes },
        ...(revokedCerts.length > 0 ? { revokedCerts: revokedCerts.slice(-WireLimits.maxCertificates) } : {}),
        ...(escrow !== null ? { escrow } : {}),
        // The signed records behind every revocation, so devices believe them, not the certificate lists.
        ...(revocations.length > 0 ? { revocations } : {}),
        ...(userRecovery?.reset ? { reset: userRecovery.reset } : {}),
      },
      10,
    );
    for (const registered of registeredNow) this.#ctx.announceDevice(this, registered);
    this.#ctx.log.log('info', 'device connected', { user: hello.user, device: hello.device });
  }

  /**
   * A revoked device that proved its key: it is sent the signed records its revocation stands on
   * (when the relay keeps them), then the close (4003) — never `ready`.
   */
  async #refuseRevoked(state: Extract<State, { kind: 'challenged' }>, device: DeviceRecord): Promise<void> {
    const notice = revokedNotice(device.deviceId, await this.#ctx.store.revocationRecords(device.deviceId));
    if (this.#state !== state) return;
    this.#ctx.log.log('info', 'revoked device refused', { user: device.userId, device: device.deviceId, records: notice !== undefined });
    if (notice) this.#ws.send(encodeFrame(notice));
    this.#fail({ code: ErrorCode.DEVICE_REVOKED, message: 'this device was revoked' }, CloseCode.DEVICE_REVOKED);
  }

  /**
   * Checks a reset in hello before the challenge, so a wrong one costs no challenge: it is for
   * this user, keeps this device, is signed by the user's recovery key (as the relay keeps it)
   * and carries the next generation. The store checks the generation again when applying it.
   */
  async #checkReset(hello: HelloFrame, reset: RecoveryReset): Promise<KeelError | undefined> {
    if (reset.user !== hello.user) return { code: ErrorCode.RECOVERY_INVALID, message: 'the reset is for another user' };
    if (!reset.keep.includes(hello.device)) return { code: ErrorCode.RECOVERY_INVALID, message: 'a reset must keep the device that presents it' };
    const recovery = await this.#ctx.store.getRecovery(hello.user);
    if (!recovery) return { code: ErrorCode.RECOVERY_UNKNOWN, message: 'this user has no recovery key' };
    if (!verifyRecoveryReset(reset, recovery.recoveryKey)) return { code: ErrorCode.RECOVERY_INVALID, message: "the reset is not signed by this user's recovery key" };
    if (reset.gen !== recovery.gen + 1) {
      return { code: ErrorCode.RECOVERY_REPLAYED, message: `the next reset of this user is generation ${recovery.gen + 1}, not ${reset.gen}` };
    }
    return undefined;
  }

  /**
   * Applies a verified reset for a device that proved its key: enrols it if new, keeps the
   * devices it names, revokes every other device of the user and cuts them off at once.
   * Resolves to the devices to announce, or undefined when it was refused (the socket is closing).
   */
  async #applyReset(hello: HelloFrame, reset: RecoveryReset, pending: readonly VerifiedCertificate[]): Promise<DeviceRecord[] | undefined> {
    const { store, config, log } = this.#ctx;
    const link = pending[pending.length - 1];
    const enrol = link ? { cert: link.cert, publicKey: link.deviceKey, userKey: link.userKey } : undefined;
    const now = this.#ctx.now();
    const applied = await store.applyRecoveryReset(reset, enrol, now, deviceLimits(config));
    if (!applied.ok) {
      this.#authFailed(hello, applied.error.message, applied.error.code);
      return undefined;
    }
    const { revoked, kept, enrolled } = applied.value;
    log.log('info', 'recovery reset applied', { user: hello.user, device: hello.device, gen: reset.gen, kept: kept.length, revoked: revoked.length });
    await store.appendAudit(
      [{ actor: 'recovery', op: 'recovery.reset', userId: hello.user, outcome: 'applied', detail: { gen: reset.gen, kept: kept.length, revoked: revoked.length } }],
      now,
    );
    this.#ctx.devicesRevoked(hello.user, revoked.map((gone): RevokedFrame => ({ type: 'revoked', device: gone.deviceId, reset })));
    // Kept devices online (none, usually) learn which devices are live again.
    return [...(enrolled ? [enrolled] : []), ...kept.filter((d) => d.deviceId !== hello.device)];
  }

  /** A device being recovered asks which user its recovery key belongs to; the answer ends the connection. */
  async #onRecoveryFind(frame: Extract<ClientFrame, { type: 'recovery-find' }>): Promise<void> {
    if (frame.v !== PROTOCOL_VERSION) {
      return this.#fail({ code: ErrorCode.UNSUPPORTED_VERSION, message: `protocol v${frame.v} is not supported` }, CloseCode.UNSUPPORTED_VERSION);
    }
    const found = await this.#ctx.store.findRecoveryUser(fromB64(frame.recoveryKey));
    if (this.#state.kind !== 'hello') return;
    if (!found) {
      this.#ctx.log.log('warn', 'recovery key unknown', {});
      return this.#fail({ code: ErrorCode.RECOVERY_UNKNOWN, message: 'no user of this relay has this recovery key' }, CloseCode.AUTH_FAILED);
    }
    // The escrow opens only with the recovery secret; handing it out lets the device check it before any reset.
    const answer: RelayFrame = {
      type: 'recovery-found',
      user: found.userId,
      userKey: toB64(found.userKey),
      gen: found.gen,
      ...(found.escrow !== null ? { escrow: found.escrow } : {}),
    };
    this.#ws.send(encodeFrame(answer), () => this.#closeSocket(CloseCode.NORMAL, 'done'));
    this.#teardown();
  }

  #openSession(user: UserId, device: DeviceRecord, tier: TierState): Session {
    const ctx = this.#ctx;
    // From now on this connection's work shares its user's turns in the queue.
    ctx.work.forget(this.#owner);
    this.#owner = this.#ownerFor(user);
    const owner = this.#owner;
    const send = (frame: RelayFrame, lane: number) => this.send(frame, lane);
    const badFrame = (error: KeelError) => this.#badFrame(error);
    const abuse = () => this.#countAbuse();
    let session: Session;
    const visible = (entry: Pick<LogEntry, 'env'>): boolean =>
      session.tier.policy.crossDevice || isCrisisLane(entry.env.lane) || entry.env.device === device.deviceId;
    const delivery = new Delivery({ store: ctx.store, work: ctx.work, owner, out: this.#out, user, device: device.deviceId, maxSubscriptions: ctx.config.maxSubscriptions, visible, send });
    const ingest = new Ingest({
      store: ctx.store,
      commits: ctx.commits,
      quota: ctx.quota,
      crisis: ctx.crisis,
      work: ctx.work,
      readsQueued: () => delivery.queuedSteps,
      owner,
      log: ctx.log,
      now: () => ctx.now(),
      snapshotRetentionMs: ctx.config.snapshotRetentionMs,
      user,
      device,
      verifier: createDeviceVerifier(device.publicKey),
      policy: () => session.tier.policy,
      ack: (acks, lane) => this.send({ type: 'ack', acks }, lane),
      reject: (doc, counter, error, kind) => this.#reject(doc, counter, error, kind),
      badFrame,
      abuse,
      stored: (docId, entries) => {
        // The author has these already; its own subscription must not send them back.
        delivery.markOwn(docId, entries[entries.length - 1]!.seq);
        ctx.fanOut(this, docId, entries);
      },
      internal: (error) => this.#internal(error),
    });
    const admin = new DeviceAdmin({
      store: ctx.store,
      config: ctx.config,
      log: ctx.log,
      now: () => ctx.now(),
      pairings: ctx.pairings,
      user,
      device,
      self: this,
      send,
      badFrame,
      abuse,
      announceDevice: (registered) => ctx.announceDevice(this, registered),
      toUser: (frame, lane) => ctx.toUser(user, frame, lane),
      cutOffDevice: (id, notice) => ctx.cutOffDevice(user, id, notice),
      devicesRevoked: (notices) => ctx.devicesRevoked(user, notices),
    });
    const awareness = new AwarenessGate(ctx.awarenessLimits, () => ctx.now());
    session = { user, device, tier, ingest, delivery, admin, awareness };
    return session;
  }

  /** A new device joins with a pairing code: the issuing device is asked, the relay only forwards. */
  async #onPairJoin(frame: Extract<ClientFrame, { type: 'pair-join' }>): Promise<void> {
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

  // ── refusals and endings ─────────────────────────────────────────────────────────────────

  #reject(doc: DocId, counter: number, error: KeelError & { readonly retryAfterMs?: number; readonly expected?: number }, kind?: 'update' | 'snapshot'): void {
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
        ...(error.expected !== undefined ? { expected: error.expected } : {}),
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

  /** The device let its outgoing queue pass its bound: drop it; it catches up when it returns. */
  #slowConsumer(): void {
    this.#ctx.log.log('warn', 'slow consumer dropped', { user: this.user, device: this.device, queued: this.#out.queuedChars });
    this.close(CloseCode.SLOW_CONSUMER, 'SLOW_CONSUMER');
  }

  /** Sends a final error frame, then closes once it is written. */
  #fail(error: KeelError, closeCode: number): void {
    if (this.#state.kind === 'closed') return;
    this.#ws.send(encodeFrame({ type: 'error', code: error.code, message: error.message }), () => this.#closeSocket(closeCode, error.code));
    this.#teardown();
  }

  /**
   * Starts the close handshake and cuts the socket if it does not finish soon (a peer that
   * does not read never answers it). A socket paused for flooding reads again, or the peer's
   * close frame would never be seen.
   */
  #closeSocket(code: number, reason: string): void {
    this.#ws.resume();
    this.#ws.close(code, reason);
    clearTimeout(this.#closeTimer);
    this.#closeTimer = setTimeout(() => this.#ws.terminate(), CLOSE_GRACE_MS);
  }

  #internal(error: unknown): void {
    this.#ctx.log.log('error', 'internal error', { user: this.user, device: this.device, error: error instanceof Error ? error.message : String(error) });
    this.#fail({ code: ErrorCode.INTERNAL, message: 'internal relay error; retry' }, CloseCode.INTERNAL_ERROR);
  }

  #teardown(): void {
    const state = this.#state;
    if (state.kind === 'closed') return;
    this.#state = { kind: 'closed' };
    clearTimeout(this.#authTimer);
    clearTimeout(this.#floodTimer);
    this.#out.close();
    this.#ctx.work.forget(this.#owner);
    for (const session of this.#ctx.pairings.dropAll(this)) {
      // The issuer went away: the joining device's attempt ends.
      if (session.issuer === this) session.joiner?.close(CloseCode.PAIRING_FAILED, ErrorCode.PAIRING_NOT_FOUND);
    }
    if (state.kind === 'ready') {
      state.session.delivery.close();
      this.#ctx.detach(this);
    } else {
      this.#ctx.leftPreAuth(this);
    }
  }
}

const assertNever = (value: never): never => {
  throw new Error(`unhandled frame ${JSON.stringify(value)}`);
};
