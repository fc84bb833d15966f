// The existing device's side of pairing: offers a single-use code, keeps its session open at the
// relay (again after a reconnect), and answers the joining device with a sealed grant. The
// joining side is pairing.ts. KeelClient forwards the relay's pairing frames here.
import {
  type ClientFrame,
  type DeviceCertificate,
  type KeelError,
  type RelayFrame,
  type RelayId,
  ErrorCode,
  createPairingCode,
  fromB64,
  sealToDevice,
  verifyPairingProof,
} from '@keel/engine';
import type { DeviceTrust } from './device-trust.js';
import { type Identity, authorizeDevice } from './identity.js';
import { encodeGrant } from './pairing.js';

export interface PairingHostDeps {
  readonly identity: Identity;
  readonly trust: DeviceTrust;
  /** Sends a frame if the link is authenticated; false otherwise. */
  readonly send: (frame: ClientFrame) => boolean;
  /** Resolves once the link is authenticated; rejects after `timeoutMs`, on a final error or when the client closes. */
  readonly whenLinkReady: (timeoutMs: number) => Promise<void>;
  /** The relay id this device is pinned to, handed to the new device. */
  readonly relayId: () => RelayId | undefined;
  readonly now: () => number;
  /** How long the relay has to confirm a session. */
  readonly confirmMs: number;
}

export interface PairingOffer {
  /** Show it to the person (text or QR); single use, valid for the requested time. */
  readonly code: string;
  /** Resolves with the new device's certificate once it joined. */
  readonly linked: Promise<DeviceCertificate>;
  readonly cancel: () => void;
}

interface Session {
  readonly secret: Uint8Array;
  readonly expiresAt: number;
  readonly resolve: (cert: DeviceCertificate) => void;
  readonly reject: (e: Error) => void;
  readonly timer: ReturnType<typeof setTimeout>;
}

const pairingError = (code: string, message: string): Error => Object.assign(new Error(`${code}: ${message}`), { code });

export class PairingHost {
  readonly #deps: PairingHostDeps;
  readonly #sessions = new Map<string, Session>();
  /** Sessions sent to the relay and not yet confirmed by `pair-opened`. */
  readonly #opening = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();

  constructor(deps: PairingHostDeps) {
    this.#deps = deps;
  }

  /**
   * Offers a single-use pairing code for a new device, valid for `ttlMs`. Waits for the link if
   * it is not up yet (within the code's lifetime) and returns the code only once the relay holds
   * the session, so a device joining at once finds it.
   */
  async start(options: { ttlMs?: number } = {}): Promise<PairingOffer> {
    const ttlMs = options.ttlMs ?? 120_000;
    await this.#deps.whenLinkReady(ttlMs);
    const pairing = createPairingCode();
    const expiresAt = this.#deps.now() + ttlMs;
    let cancel = () => {};
    const linked = new Promise<DeviceCertificate>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#sessions.delete(pairing.id);
        reject(pairingError('PAIRING_EXPIRED', 'no device joined in time'));
      }, ttlMs);
      this.#sessions.set(pairing.id, { secret: pairing.secret, expiresAt, resolve, reject, timer });
      cancel = () => {
        clearTimeout(timer);
        this.#sessions.delete(pairing.id);
        reject(pairingError('PAIRING_REFUSED', 'cancelled'));
      };
    });
    linked.catch(() => {});
    try {
      await this.#open(pairing.id, ttlMs);
    } catch (error) {
      cancel();
      throw error;
    }
    return { code: pairing.code, linked, cancel };
  }

  /** Sends `pair-open` and waits for the relay's `pair-opened` (a refusal, a lost link or `confirmMs`: rejected). */
  #open(id: string, ttlMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error('TIMEOUT: the relay did not confirm the pairing session')), this.#deps.confirmMs);
      const done = () => {
        clearTimeout(timer);
        this.#opening.delete(id);
      };
      const fail = (error: Error) => {
        done();
        reject(error);
      };
      this.#opening.set(id, { resolve: () => (done(), resolve()), reject: fail });
      if (!this.#deps.send({ type: 'pair-open', id, ttlMs })) fail(new Error('pairing needs a connection to the relay'));
    });
  }

  /** The relay confirmed a session. */
  onOpened(id: string): void {
    this.#opening.get(id)?.resolve();
  }

  /**
   * An error frame from the relay: a refused session (too many open, say) is answered with one.
   * Rejects the session being opened, if any.
   */
  onRelayError(error: KeelError & { readonly final?: boolean }): void {
    const opening = this.#opening.values().next().value;
    if (!error.final && opening && (error.code === ErrorCode.LIMIT_EXCEEDED || error.code.startsWith('PAIRING_'))) {
      opening.reject(pairingError(error.code, error.message));
    }
  }

  /** The link dropped: the relay keeps sessions per connection, so one not yet confirmed is gone with it. */
  onLinkDown(): void {
    for (const waiter of this.#opening.values()) waiter.reject(new Error('the connection to the relay dropped before it confirmed the pairing session'));
  }

  /** A new connection: sessions opened on the last one died with it and are opened again for what is left of their time. */
  onReady(): void {
    for (const [id, session] of this.#sessions) {
      const left = session.expiresAt - this.#deps.now();
      if (left >= 1_000 && !this.#opening.has(id)) this.#deps.send({ type: 'pair-open', id, ttlMs: left });
    }
  }

  /** A device asks to join with a code: checked against the session's secret, then certified and sent its sealed grant. */
  onRequest(frame: Extract<RelayFrame, { type: 'pair-request' }>): void {
    const pending = this.#sessions.get(frame.id);
    if (!pending) return;
    this.#sessions.delete(frame.id);
    clearTimeout(pending.timer);
    const deviceKey = fromB64(frame.deviceKey);
    if (!verifyPairingProof(pending.secret, frame.id, deviceKey, frame.proof)) {
      this.#deps.send({ type: 'pair-refuse', id: frame.id, reason: 'the joining device does not hold the code' });
      pending.reject(pairingError('PAIRING_REFUSED', 'a device without the code tried to join'));
      return;
    }
    const { identity, trust } = this.#deps;
    const grant = authorizeDevice(identity, deviceKey, this.#deps.now());
    trust.add({ certs: [grant.cert] });
    this.#deps.send({ type: 'register', cert: grant.cert });
    // The new device pins the deployment this one trusts, not whatever relay it first meets.
    const relayId = this.#deps.relayId();
    const payload = encodeGrant({ ...grant, epochs: trust.exportEpochs(), ...(relayId ? { relayId } : {}) });
    const sealed = sealToDevice(payload, deviceKey, pending.secret, frame.id);
    this.#deps.send({ type: 'pair-grant', id: frame.id, ...sealed });
    pending.resolve(grant.cert);
  }
}
