import {
  assertNever,
  type AwarenessFrame,
  CloseCode,
  type DeviceId,
  type DocId,
  ErrorCode,
  type KeelError,
  type ReceiptFrame,
  type ReportFrame,
  type RelayFrame,
  type TierName,
  type TierState,
  type UserId,
  encodeFrame,
  isCrisisLane,
  readClientFrame,
  validateClientFrame,
} from '@keel/engine';
import type { WebSocket } from 'ws';
import { createDeviceVerifier } from '../auth/ed25519.js';
import type { CrisisLane } from '../entitlements/crisis-lane.js';
import { type ConnId, type RefusedFrame, frameLabel } from '../events/relay-events.js';
import type { DeviceRecord, LogEntry } from '../storage/relay-store.js';
import { type AwarenessDrop, type AwarenessLimits, AwarenessGate } from './awareness-gate.js';
import type { CommitQueue } from './commit-queue.js';
import { Delivery } from './delivery.js';
import { DeviceAdmin, type PairingPeer } from './device-admin.js';
import { setFrameLimit } from './frame-limit.js';
import { type Authenticated, Handshake, type HandshakeContext } from './handshake.js';
import { Ingest } from './ingest.js';
import { OutboundQueue } from './outbound-queue.js';
import { ReadTurns } from './read-turns.js';
import type { RevokedFrame } from './revoked-notice.js';
import { SocketReading } from './socket-reading.js';
import type { WorkOwner, WorkQueue } from './work-queue.js';

/** How every awareness frame of Keel's client begins (JSON.stringify of `{ type: 'awareness', aw }`). */
const AWARENESS_PREFIX = Buffer.from('{"type":"awareness"');

/** How long a closed socket may take to finish the close handshake before it is cut. */
const CLOSE_GRACE_MS = 1_000;

/** What a connection needs from the relay around it (the handshake's part included). */
export interface ConnectionContext extends HandshakeContext {
  readonly commits: CommitQueue;
  readonly crisis: CrisisLane;
  /** Everything that costs CPU, run in fair, bounded slices between I/O. */
  readonly work: WorkQueue;
  /** The device authenticated; false when its user already has as many connections as allowed. */
  attach(conn: RelayConnection): boolean;
  /** `ready` went out to this connection of `user`: what waited for its devices (external crisis signals) follows. */
  ready(conn: RelayConnection, user: UserId): void;
  detach(conn: RelayConnection): void;
  /** The connection left the unauthenticated state (authenticated, paired or closed). */
  leftPreAuth(conn: RelayConnection): void;
  /** Newly committed entries of a user's document, for that user's other connections. */
  /** Newly committed entries of a user's document (their push read at `readAt`), for that user's other connections. */
  fanOut(origin: RelayConnection, docId: DocId, entries: readonly LogEntry[], readAt: number): void;
  /**
   * An awareness frame this connection's device sent (validated, its own, for a document it is
   * subscribed to): for the user's other devices subscribed to that document. Never stored.
   */
  forwardAwareness(origin: RelayConnection, doc: DocId, frame: string): void;
  /** This connection's device applied crisis-lane entries (the crisis SLA's receipt). */
  receipt(origin: RelayConnection, frame: ReceiptFrame): void;
  /** This connection's device refused an envelope of its user (a lane above its class's ceiling). */
  report(origin: RelayConnection, frame: ReportFrame): void;
  /** Awareness bounds (rate per connection, recipient queue). */
  readonly awarenessLimits: AwarenessLimits;
  /** A device was registered; tell the user's other connections. */
  announceDevice(origin: RelayConnection, device: DeviceRecord): void;
  /** Sends a frame to every authenticated connection of a user but `except`. */
  toUser(user: UserId, frame: RelayFrame, lane: number, except?: RelayConnection): void;
  /** Cuts off every connection of a revoked device of `user` at once (4003), each after `notice` when there is one. */
  cutOffDevice(user: UserId, device: DeviceId, notice: RevokedFrame | undefined): void;
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

/** A frame as ws read it off the socket, waiting for its turn (server/read-turns.ts). */
interface Message {
  readonly data: Buffer;
  readonly isBinary: boolean;
  readonly length: number;
}

type State =
  /** Before `ready`: the handshake (hello, challenge, auth; pairing; recovery-find) reads the frames. */
  | { readonly kind: 'handshake'; readonly handshake: Handshake }
  | { readonly kind: 'ready'; readonly session: Session }
  | { readonly kind: 'closed' };

/**
 * One device's WebSocket: the socket, its state, the routing of each frame and the outgoing
 * queue. Before authentication it accepts frames of a few KiB and hands them to the Handshake
 * (server/handshake.ts). After `ready` its frames go to the modules along an update's route:
 * pushes to Ingest, subscriptions to Delivery, device changes to DeviceAdmin — each bounded,
 * each in the work queue. What happens is told on the relay's event bus (events/relay-events.ts);
 * nothing here counts or measures for metrics.
 */
export class RelayConnection implements PairingPeer {
  readonly #ws: WebSocket;
  readonly #ctx: ConnectionContext;
  readonly #out: OutboundQueue;
  readonly #authTimer: NodeJS.Timeout;
  readonly #id: ConnId;
  readonly #connectedAt: number;
  #state: State;
  /** Who this connection authenticated as, kept past its teardown for the `disconnected` event. */
  #identity: { readonly user: UserId; readonly device: DeviceId } | undefined;
  #badFrames = 0;
  #closeTimer: NodeJS.Timeout | undefined;
  /** The frame being read is awareness already admitted by the rate check on its raw bytes. */
  #admitted = false;
  /** Held by the work queue's backlog, an awareness flood and frames waiting for a later turn. */
  readonly #reading: SocketReading;
  /** How many of the frames read off the socket are handled in one turn of the event loop. */
  readonly #turns: ReadTurns<Message>;
  /** This connection as a source of queued work; its group is its user once authenticated. */
  #owner: WorkOwner;

  constructor(ws: WebSocket, ctx: ConnectionContext, id: ConnId) {
    this.#ws = ws;
    this.#ctx = ctx;
    this.#id = id;
    this.#connectedAt = ctx.now();
    this.#state = { kind: 'handshake', handshake: this.#createHandshake() };
    setFrameLimit(ws, ctx.config.preAuthMaxBytes);
    this.#reading = new SocketReading(ws, () => {
      if (this.#state.kind === 'ready') this.send({ type: 'pong', id: 0 }, 10);
    });
    this.#out = new OutboundQueue(ws, 256 * 1024, {
      maxQueuedChars: ctx.config.maxOutboundBytes,
      lowWaterChars: 512 * 1024,
      onOverflow: () => this.#slowConsumer(),
      onRoom: () => {
        if (this.#state.kind === 'ready') this.#state.session.delivery.onRoom();
      },
    });
    this.#authTimer = setTimeout(() => {
      if (this.#state.kind === 'handshake') ctx.events.emit('authFailed', { code: ErrorCode.AUTH_TIMEOUT });
      this.#fail({ code: ErrorCode.AUTH_TIMEOUT, message: `not authenticated within ${ctx.config.authTimeoutMs} ms` }, CloseCode.AUTH_TIMEOUT);
    }, ctx.config.authTimeoutMs);
    this.#owner = this.#ownerFor(this);
    this.#turns = new ReadTurns<Message>(this.#reading, ({ data, isBinary }) => {
      try {
        if (!isBinary && this.#awarenessOverRate(data)) return;
        this.#onMessage(isBinary ? new Uint8Array(data) : data.toString('utf8'));
      } catch (error) {
        this.#internal(error);
      }
    });
    ws.on('message', (data, isBinary) => this.#turns.offer({ data: data as Buffer, isBinary, length: (data as Buffer).length }));
    ws.on('close', (code: number) => {
      clearTimeout(this.#closeTimer);
      this.#teardown();
      ctx.events.emit('disconnected', { conn: id, ...this.#identity, code, durationMs: ctx.now() - this.#connectedAt });
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
    return { group, pause: () => this.#reading.hold(), resume: () => this.#reading.release() };
  }

  /** Awareness past the rate: counted; a peer that keeps at it has its socket paused a while. */
  #awarenessOverRateDropped(session: Session): void {
    this.#ctx.events.emit('awarenessDropped', { reason: 'RATE_LIMITED' });
    if (!this.#reading.timedHold && session.awareness.flooding()) this.#reading.holdFor(this.#ctx.awarenessLimits.floodPauseMs);
  }

  get user(): UserId | undefined {
    return this.#state.kind === 'ready' ? this.#state.session.user : undefined;
  }

  get device(): DeviceId | undefined {
    return this.#state.kind === 'ready' ? this.#state.session.device.deviceId : undefined;
  }

  /** The tier this connection enforces now (undefined before `ready`). */
  get tierName(): TierName | undefined {
    return this.#state.kind === 'ready' ? this.#state.session.tier.name : undefined;
  }

  /** Adds the characters queued to this device, per lane, to `into` (the metrics' queue-depth gauge). */
  addQueuedCharsByLane(into: number[]): void {
    this.#out.addQueuedCharsByLane(into);
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
  /** Queues newly committed entries of another connection; false if held for a catch-up in progress. */
  deliver(docId: DocId, entries: readonly LogEntry[]): boolean {
    return this.#state.kind === 'ready' && this.#state.session.delivery.deliver(docId, entries);
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
    if (this.#state.kind !== 'handshake' || this.#state.handshake.pairingId === undefined) return;
    this.#ctx.events.emit('pairing', { outcome: 'granted' });
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
    if (state.kind === 'handshake') return state.handshake.onFrame(data);
    const raw = readClientFrame(data, this.#ctx.config.maxPayloadBytes);
    if (!raw.ok) return this.#badFrame(raw.error, 'unknown');
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
    if (!parsed.ok) return this.#badFrame(parsed.error, frameLabel(raw.value.type));
    const frame = parsed.value;
    switch (frame.type) {
      case 'ping':
        // Answered at once, ahead of bulk frames: it measures the link, not the queue.
        return this.send({ type: 'pong', id: frame.id }, 10);
      case 'awareness':
        return this.#onAwareness(session, frame);
      case 'sub':
        // At once, in order with this connection's other frames (its awareness for a document
        // needs the subscription in place): registering is a map insert per document, and the
        // catch-up it starts runs in the work queue. Past the cap one refusal answers the frame,
        // and subscribing past it is no honest client's doing (it pages): it counts as a bad frame.
        if (session.delivery.subscribe(frame.docs) > 0) this.#countAbuse();
        return;
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
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: `"${frame.type}" after authentication` }, frame.type);
      case 'pair-join':
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: 'pair-join is for new devices, before authentication' }, frame.type);
      case 'recovery-find':
        return this.#badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: 'recovery-find is for devices being recovered, before authentication' }, frame.type);
      case 'receipt':
        return this.#ctx.receipt(this, frame);
      case 'report':
        return this.#ctx.report(this, frame);
      case 'push':
        return;
      default:
        return assertNever(frame, 'frame');
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
      return this.#badFrame({ code: ErrorCode.WRONG_AUTHOR, message: 'awareness must be sealed by the device that sends it' }, 'awareness');
    }
    if (!session.delivery.has(doc)) return this.#ctx.events.emit('awarenessDropped', { reason: 'NOT_SUBSCRIBED' });
    if (!session.tier.policy.crossDevice) return this.#ctx.events.emit('awarenessDropped', { reason: 'TIER' });
    // Encoded again from the validated frame: exactly its schema's fields go on.
    this.#ctx.forwardAwareness(this, doc, encodeFrame(frame));
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

  // ── the handshake, and what follows it ───────────────────────────────────────────────────

  #createHandshake(): Handshake {
    return new Handshake({
      ctx: this.#ctx,
      peer: this,
      send: (frame, lane) => this.send(frame, lane),
      sendNow: (frame, close) => {
        if (!close) return this.#ws.send(encodeFrame(frame));
        this.#ws.send(encodeFrame(frame), () => this.#closeSocket(close.code, close.reason));
        this.#teardown();
      },
      fail: (error, closeCode) => this.#fail(error, closeCode),
      badFrame: (error, frame) => this.#badFrame(error, frame),
      queue: (step) => this.#queue(step),
      authenticated: (outcome) => this.#onAuthenticated(outcome),
    });
  }

  /** The handshake ended in `ready`: the session opens, the connection joins its user's, `ready` goes out. */
  #onAuthenticated(outcome: Authenticated): void {
    const { config } = this.#ctx;
    const { user, device, tier } = outcome;
    clearTimeout(this.#authTimer);
    this.#state = { kind: 'ready', session: this.#openSession(user, device, tier) };
    this.#ctx.leftPreAuth(this);
    if (!this.#ctx.attach(this)) {
      return this.#fail(
        { code: ErrorCode.LIMIT_EXCEEDED, message: `this user has ${config.maxConnectionsPerUser} connections open, the most this relay allows` },
        CloseCode.TRY_AGAIN_LATER,
      );
    }
    this.#identity = { user, device: device.deviceId };
    setFrameLimit(this.#ws, config.maxPayloadBytes);
    this.send(outcome.ready, 10);
    for (const registered of outcome.announce) this.#ctx.announceDevice(this, registered);
    this.#ctx.ready(this, user);
    this.#ctx.events.emit('authenticated', { conn: this.#id, user, device: device.deviceId, tier: tier.name, newUser: outcome.newUser });
  }

  #openSession(user: UserId, device: DeviceRecord, tier: TierState): Session {
    const ctx = this.#ctx;
    // From now on this connection's work shares its user's turns in the queue.
    ctx.work.forget(this.#owner);
    this.#owner = this.#ownerFor(user);
    const owner = this.#owner;
    const send = (frame: RelayFrame, lane: number) => this.send(frame, lane);
    const badFrame = (error: KeelError, frame: RefusedFrame) => this.#badFrame(error, frame);
    const abuse = () => this.#countAbuse();
    let session: Session;
    const visible = (entry: Pick<LogEntry, 'env'>): boolean =>
      session.tier.policy.crossDevice || isCrisisLane(entry.env.lane) || entry.env.device === device.deviceId;
    const delivery = new Delivery({
      store: ctx.store,
      work: ctx.work,
      owner,
      out: this.#out,
      user,
      device: device.deviceId,
      maxSubscriptions: ctx.config.maxSubscriptions,
      events: ctx.events,
      visible,
      send,
    });
    const ingest = new Ingest({
      store: ctx.store,
      commits: ctx.commits,
      quota: ctx.quota,
      crisis: ctx.crisis,
      work: ctx.work,
      readsQueued: () => delivery.queuedSteps,
      owner,
      log: ctx.log,
      events: ctx.events,
      now: () => ctx.now(),
      snapshotRetentionMs: ctx.config.snapshotRetentionMs,
      user,
      device,
      verifier: createDeviceVerifier(device.publicKey),
      policy: () => session.tier.policy,
      tierName: () => session.tier.name,
      ack: (acks, lane) => this.send({ type: 'ack', acks }, lane),
      reject: (doc, counter, error, kind) => this.#reject(doc, counter, error, kind),
      badFrame: (error) => badFrame(error, 'push'),
      abuse,
      stored: (docId, entries, readAt) => {
        // The author has these already; its own subscription must not send them back.
        delivery.markOwn(docId, entries[entries.length - 1]!.seq);
        ctx.fanOut(this, docId, entries, readAt);
      },
      internal: (error) => this.#internal(error),
    });
    const admin = new DeviceAdmin({
      store: ctx.store,
      config: ctx.config,
      log: ctx.log,
      events: ctx.events,
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

  // ── refusals and endings ─────────────────────────────────────────────────────────────────

  #reject(doc: DocId, counter: number, error: KeelError & { readonly retryAfterMs?: number; readonly expected?: number }, kind?: 'update' | 'snapshot'): void {
    const deferral = error.retryAfterMs !== undefined;
    this.#ctx.events.emit('refused', { ...this.#identity, code: error.code, frame: 'push', kind: deferral ? 'deferred' : 'rejected' });
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

  #badFrame(error: KeelError, frame: RefusedFrame): void {
    this.#ctx.events.emit('refused', { ...this.#identity, code: error.code, frame, kind: 'bad-frame' });
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
    this.#reading.close();
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
    if (state.kind === 'handshake') state.handshake.end();
    clearTimeout(this.#authTimer);
    this.#turns.close();
    this.#reading.close();
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

