import {
  assertNever,
  type ClientFrame,
  CloseCode,
  type DeviceId,
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
  fromB64,
  readClientFrame,
  toB64,
  validateClientFrame,
  verifyChallenge,
  verifyRecoveryReset,
} from '@keel/engine';
import { type VerifiedCertificate, verifyPresentedCertificate } from '../auth/registration.js';
import { admitSignup } from '../auth/signup-tokens.js';
import type { ServingConfig } from '../config.js';
import type { Entitlements } from '../entitlements/entitlements.js';
import type { QuotaGuard } from '../entitlements/quota.js';
import { type RefusedFrame, type RelayEvents, frameLabel } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import type { DeviceRecord, RelayStore } from '../storage/relay-store.js';
import { type PairingPeer, deviceLimits } from './device-admin.js';
import type { PairingRegistry } from './pairing.js';
import { type RevokedFrame, revokedNotice } from './revoked-notice.js';

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
export const fitEpochs = <T>(records: readonly T[]): T[] => {
  const kept: T[] = [];
  let chars = 0;
  for (let i = records.length - 1; i >= 0; i--) {
    chars += JSON.stringify(records[i]).length;
    if (chars > READY_EPOCH_CHARS) break;
    kept.unshift(records[i]!);
  }
  return kept;
};

export type ReadyFrame = Extract<RelayFrame, { type: 'ready' }>;

/** What the relay around a handshake provides. */
export interface HandshakeContext {
  readonly config: ServingConfig;
  readonly store: RelayStore;
  readonly entitlements: Entitlements;
  readonly quota: QuotaGuard;
  readonly pairings: PairingRegistry<PairingPeer>;
  readonly log: Logger;
  readonly events: RelayEvents;
  now(): number;
  /**
   * Devices of `user` were revoked: each is sent its notice (the signed record it stands on) and
   * cut off (4003), and the user's other connections get the same notices, in order.
   */
  devicesRevoked(user: UserId, notices: readonly RevokedFrame[]): void;
}

/** A handshake that ended in `ready`: the connection opens its session with this. */
export interface Authenticated {
  readonly user: UserId;
  readonly device: DeviceRecord;
  readonly tier: TierState;
  /** The `ready` frame, assembled; sent by the connection once it is attached. */
  readonly ready: ReadyFrame;
  /** Devices this handshake registered (or a reset kept): the user's other connections are told. */
  readonly announce: readonly DeviceRecord[];
  /** This handshake registered the user's first device. */
  readonly newUser: boolean;
}

/** What a handshake does to its connection. */
export interface HandshakeDeps {
  readonly ctx: HandshakeContext;
  /** The connection, as the joining end of a pairing. */
  readonly peer: PairingPeer;
  send(frame: RelayFrame, lane: number): void;
  /** Writes a frame straight to the socket, past anything queued; then closes with `code` when given. */
  sendNow(frame: RelayFrame, close?: { readonly code: number; readonly reason: string }): void;
  /** Sends a final error frame and closes. */
  fail(error: KeelError, closeCode: number): void;
  /** Answers a frame that is not acted on; counts against the bad-frame budget. */
  badFrame(error: KeelError, frame: RefusedFrame): void;
  /** Runs a step in the work queue, in order with the connection's other steps. */
  queue(step: () => Promise<void>): void;
  /** The device proved its key and may be served. */
  authenticated(outcome: Authenticated): void;
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
  /** A new device that joined with a pairing code and waits for its grant. */
  | { readonly kind: 'pairing'; readonly id: string }
  /** Authenticated, refused or closed: nothing more happens here. */
  | { readonly kind: 'done' };

/**
 * A connection before `ready`: hello → challenge → auth, or pair-join (a new device waiting for
 * its grant), or recovery-find (one question, one answer). Reads frames of at most
 * `preAuthMaxBytes`, one `hello` (or `pair-join`, `recovery-find`) and one `auth`, each validated
 * and handled in the work queue; anything else is answered and counted, never acted on.
 * Certificates presented in `hello` are registered only after the device proved its key.
 */
export class Handshake {
  readonly #deps: HandshakeDeps;
  #state: State = { kind: 'hello' };
  #helloSeen = false;
  #authSeen = false;

  constructor(deps: HandshakeDeps) {
    this.#deps = deps;
  }

  /** Waiting for a pairing grant: the pairing code this connection joined with. */
  get pairingId(): string | undefined {
    return this.#state.kind === 'pairing' ? this.#state.id : undefined;
  }

  /** The connection closed (or left the handshake): steps still queued do nothing. */
  end(): void {
    this.#state = { kind: 'done' };
  }

  /** A frame read off the socket before authentication. */
  onFrame(data: string | Uint8Array): void {
    const { ctx } = this.#deps;
    const state = this.#state;
    if (state.kind === 'done') return;
    const raw = readClientFrame(data, ctx.config.preAuthMaxBytes);
    if (!raw.ok) return this.#deps.badFrame(raw.error, 'unknown');
    const type = raw.value.type;
    if (state.kind === 'pairing') {
      return this.#deps.badFrame({ code: ErrorCode.UNEXPECTED_FRAME, message: `"${type}" while waiting for a pairing grant` }, frameLabel(type));
    }
    const expected = !this.#helloSeen ? type === 'hello' || type === 'pair-join' || type === 'recovery-find' : type === 'auth' && !this.#authSeen;
    if (!expected) return this.#deps.badFrame({ code: ErrorCode.NOT_AUTHENTICATED, message: `"${type.slice(0, 32)}" before authentication` }, frameLabel(type));
    const parsed = validateClientFrame(raw.value);
    if (!parsed.ok) return this.#deps.badFrame(parsed.error, frameLabel(type));
    const frame = parsed.value;
    if (frame.type === 'auth') this.#authSeen = true;
    else this.#helloSeen = true;
    this.#deps.queue(() => this.#step(frame));
  }

  async #step(frame: ClientFrame): Promise<void> {
    const state = this.#state;
    if (state.kind === 'done') return;
    const outOfTurn = () => this.#deps.badFrame({ code: ErrorCode.NOT_AUTHENTICATED, message: `"${frame.type}" before hello` }, frame.type);
    switch (frame.type) {
      case 'pair-join':
        return this.#onPairJoin(frame);
      case 'recovery-find':
        return this.#onRecoveryFind(frame);
      case 'hello':
        return state.kind === 'hello' ? this.#onHello(frame) : outOfTurn();
      case 'auth':
        return state.kind === 'challenged' ? this.#onAuth(frame.sig, state) : outOfTurn();
      // onFrame lets none of these through; answered all the same should that ever change.
      case 'push':
      case 'sub':
      case 'unsub':
      case 'ping':
      case 'awareness':
      case 'register':
      case 'revoke':
      case 'epoch':
      case 'vouch':
      case 'pair-open':
      case 'pair-grant':
      case 'pair-refuse':
      case 'receipt':
      case 'report':
        return outOfTurn();
      default:
        return assertNever(frame, 'handshake frame');
    }
  }

  async #onHello(hello: HelloFrame): Promise<void> {
    const { ctx } = this.#deps;
    if (hello.v !== PROTOCOL_VERSION) {
      return this.#refuse(
        { code: ErrorCode.UNSUPPORTED_VERSION, message: `protocol v${hello.v} is not supported; this relay speaks v${PROTOCOL_VERSION}` },
        CloseCode.UNSUPPORTED_VERSION,
      );
    }
    const reset = hello.recovery;
    if (reset) {
      const refused = await this.#checkReset(hello, reset);
      if (refused) return this.#authFailed(hello, refused.message, refused.code);
    }
    const known = await ctx.store.getDevice(hello.device);
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
      const verified = await verifyPresentedCertificate(ctx.store, hello.cert, reset ? [] : hello.chain ?? [], hello.user, hello.device);
      if (!verified.ok) return this.#authFailed(hello, verified.error.message, verified.error.code);
      publicKey = verified.value[verified.value.length - 1]!.deviceKey;
      pending = verified.value;
    } else {
      return this.#authFailed(hello, 'unknown device and no certificate', ErrorCode.UNKNOWN_DEVICE);
    }
    if (this.#state.kind !== 'hello') return;
    const nonce = createChallengeNonce();
    this.#state = { kind: 'challenged', hello, nonce, publicKey, pending, recovery: reset };
    this.#deps.send({ type: 'challenge', v: PROTOCOL_VERSION, relay: ctx.config.relayId, nonce }, 10);
  }

  async #onAuth(sig: string, state: Extract<State, { kind: 'challenged' }>): Promise<void> {
    const { hello, nonce, publicKey, pending, recovery } = state;
    const { ctx } = this.#deps;
    const { store, config } = ctx;
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
      const refused = await admitSignup({ mode: config.registration, store, now: ctx.now() }, hello, pending);
      if (refused) return this.#authFailed(hello, refused.message, refused.code);
      for (const link of pending) {
        const escrow = link.cert.issuer === null ? hello.escrow : undefined;
        const at = ctx.now();
        const registered = await store.registerDevice(link.cert, link.deviceKey, link.userKey, at, deviceLimits(config), escrow);
        if (!registered.ok) return this.#authFailed(hello, registered.error.message, registered.error.code);
        registeredNow.push(registered.value);
        ctx.log.log('info', 'device registered', { user: registered.value.userId, device: registered.value.deviceId, issuer: link.cert.issuer });
        // A chain names its issuers too, registered already: only a device new to the store is told.
        if (registered.value.registeredAt === at) ctx.events.emit('deviceRegistered', { user: registered.value.userId, device: registered.value.deviceId });
      }
    }
    const device = await store.getDevice(hello.device);
    if (!device) return this.#authFailed(hello, 'device is no longer registered', ErrorCode.DEVICE_REVOKED);
    if (device.revokedAt !== null) return this.#refuseRevoked(state, device);
    const tier = await ctx.entitlements.tierOf(hello.user);
    await ctx.quota.warm(hello.user);
    const ready = await this.#assembleReady(hello.user, hello.device, tier);
    // The socket may have closed during the awaits above.
    if (this.#state !== state) return;
    this.#state = { kind: 'done' };
    this.#deps.authenticated({
      user: hello.user,
      device,
      tier,
      ready,
      announce: registeredNow,
      newUser: !recovery && pending.some((link) => link.cert.issuer === null),
    });
  }

  /**
   * The `ready` frame: the user's live device certificates, the tier, the newest key epochs that
   * fit, the frame limit, revoked devices' certificates (what they wrote before still verifies),
   * the escrow, the signed revocations and the latest reset.
   */
  async #assembleReady(user: UserId, device: DeviceId, tier: TierState): Promise<ReadyFrame> {
    const { store, config } = this.#deps.ctx;
    const devices = await store.listDevices(user);
    const certs = devices.filter((d) => d.revokedAt === null).map((d) => d.cert);
    const revokedCerts = devices.filter((d) => d.revokedAt !== null).map((d) => d.cert);
    const epochs = fitEpochs(await store.listEpochs(user, READY_EPOCHS));
    const revocations = await store.listRevocations(user, WireLimits.maxCertificates);
    const userRecovery = await store.getRecovery(user);
    const escrow = userRecovery?.escrow ?? null;
    return {
      type: 'ready',
      user,
      device,
      certs: certs.slice(-WireLimits.maxCertificates),
      tier,
      ...(epochs.length > 0 ? { epochs } : {}),
      limits: { maxFrameBytes: config.maxPayloadBytes },
      ...(revokedCerts.length > 0 ? { revokedCerts: revokedCerts.slice(-WireLimits.maxCertificates) } : {}),
      ...(escrow !== null ? { escrow } : {}),
      // The signed records behind every revocation, so devices believe them, not the certificate lists.
      ...(revocations.length > 0 ? { revocations } : {}),
      ...(userRecovery?.reset ? { reset: userRecovery.reset } : {}),
    };
  }

  /**
   * A revoked device that proved its key: it is sent the signed records its revocation stands on
   * (when the relay keeps them), then the close (4003) — never `ready`.
   */
  async #refuseRevoked(state: Extract<State, { kind: 'challenged' }>, device: DeviceRecord): Promise<void> {
    const { ctx } = this.#deps;
    const notice = revokedNotice(device.deviceId, await ctx.store.revocationRecords(device.deviceId));
    if (this.#state !== state) return;
    ctx.log.log('info', 'revoked device refused', { user: device.userId, device: device.deviceId, records: notice !== undefined });
    ctx.events.emit('authFailed', { code: ErrorCode.DEVICE_REVOKED });
    if (notice) this.#deps.sendNow(notice);
    this.#refuse({ code: ErrorCode.DEVICE_REVOKED, message: 'this device was revoked' }, CloseCode.DEVICE_REVOKED);
  }

  /**
   * Checks a reset in hello before the challenge, so a wrong one costs no challenge: it is for
   * this user, keeps this device, is signed by the user's recovery key (as the relay keeps it)
   * and carries the next generation. The store checks the generation again when applying it.
   */
  async #checkReset(hello: HelloFrame, reset: RecoveryReset): Promise<KeelError | undefined> {
    if (reset.user !== hello.user) return { code: ErrorCode.RECOVERY_INVALID, message: 'the reset is for another user' };
    if (!reset.keep.includes(hello.device)) return { code: ErrorCode.RECOVERY_INVALID, message: 'a reset must keep the device that presents it' };
    const recovery = await this.#deps.ctx.store.getRecovery(hello.user);
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
    const { ctx } = this.#deps;
    const { store, config, log } = ctx;
    const link = pending[pending.length - 1];
    const enrol = link ? { cert: link.cert, publicKey: link.deviceKey, userKey: link.userKey } : undefined;
    const now = ctx.now();
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
    if (enrolled) ctx.events.emit('deviceRegistered', { user: hello.user, device: enrolled.deviceId });
    for (const gone of revoked) ctx.events.emit('deviceRevoked', { user: hello.user, device: gone.deviceId });
    ctx.devicesRevoked(hello.user, revoked.map((gone): RevokedFrame => ({ type: 'revoked', device: gone.deviceId, reset })));
    // Kept devices online (none, usually) learn which devices are live again.
    return [...(enrolled ? [enrolled] : []), ...kept.filter((d) => d.deviceId !== hello.device)];
  }

  /** A device being recovered asks which user its recovery key belongs to; the answer ends the connection. */
  async #onRecoveryFind(frame: Extract<ClientFrame, { type: 'recovery-find' }>): Promise<void> {
    const { ctx } = this.#deps;
    if (frame.v !== PROTOCOL_VERSION) {
      return this.#refuse({ code: ErrorCode.UNSUPPORTED_VERSION, message: `protocol v${frame.v} is not supported` }, CloseCode.UNSUPPORTED_VERSION);
    }
    const found = await ctx.store.findRecoveryUser(fromB64(frame.recoveryKey));
    if (this.#state.kind !== 'hello') return;
    if (!found) {
      ctx.log.log('warn', 'recovery key unknown', {});
      return this.#refuse({ code: ErrorCode.RECOVERY_UNKNOWN, message: 'no user of this relay has this recovery key' }, CloseCode.AUTH_FAILED);
    }
    this.#state = { kind: 'done' };
    // The escrow opens only with the recovery secret; handing it out lets the device check it before any reset.
    this.#deps.sendNow(
      {
        type: 'recovery-found',
        user: found.userId,
        userKey: toB64(found.userKey),
        gen: found.gen,
        ...(found.escrow !== null ? { escrow: found.escrow } : {}),
      },
      { code: CloseCode.NORMAL, reason: 'done' },
    );
  }

  /** A new device joins with a pairing code: the issuing device is asked, the relay only forwards. */
  async #onPairJoin(frame: Extract<ClientFrame, { type: 'pair-join' }>): Promise<void> {
    const { ctx } = this.#deps;
    if (frame.v !== PROTOCOL_VERSION) {
      return this.#refuse({ code: ErrorCode.UNSUPPORTED_VERSION, message: `protocol v${frame.v} is not supported` }, CloseCode.UNSUPPORTED_VERSION);
    }
    const joined = ctx.pairings.join(frame.id, this.#deps.peer);
    if (!joined.ok) {
      ctx.log.log('warn', 'pairing refused', { code: joined.error.code });
      ctx.events.emit('pairing', { outcome: 'refused', code: joined.error.code });
      return this.#refuse(joined.error, CloseCode.PAIRING_FAILED);
    }
    ctx.events.emit('pairing', { outcome: 'joined' });
    this.#state = { kind: 'pairing', id: frame.id };
    // The auth timer keeps running: a pairing that is not granted in time ends like a silent socket.
    joined.value.issuer.send({ type: 'pair-request', id: frame.id, deviceKey: frame.deviceKey, proof: frame.proof }, 10);
  }

  #authFailed(hello: HelloFrame, message: string, code: ErrorCode = ErrorCode.AUTH_FAILED): void {
    const { ctx } = this.#deps;
    ctx.log.log('warn', 'authentication failed', { user: hello.user, device: hello.device, code });
    ctx.events.emit('authFailed', { code });
    this.#refuse({ code, message }, CloseCode.AUTH_FAILED);
  }

  /** Ends the handshake with a final error and a close. */
  #refuse(error: KeelError, closeCode: number): void {
    this.#state = { kind: 'done' };
    this.#deps.fail(error, closeCode);
  }
}

