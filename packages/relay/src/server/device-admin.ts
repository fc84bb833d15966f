import {
  type ClientFrame,
  CloseCode,
  type DeviceCertificate,
  type DeviceId,
  type EpochRecord,
  ErrorCode,
  type KeelError,
  type RelayFrame,
  type Revocation,
  type UserId,
  checkCertificateIds,
  verifyCertificateSignature,
  verifyEpochRecord,
  verifyRevocation,
} from '@keel/engine';
import { verifyPresentedCertificate } from '../auth/registration.js';
import type { RelayConfig } from '../config.js';
import type { RefusedFrame, RelayEvents } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import type { DeviceLimits, DeviceRecord, RelayStore } from '../storage/relay-store.js';
import type { PairingRegistry } from './pairing.js';
import { type RevokedFrame, revokedNotice } from './revoked-notice.js';

/** The other end of a pairing: the connection that opened a code, or the new device that joined with it. */
export interface PairingPeer {
  send(frame: RelayFrame, lane: number): void;
  grantAndClose(frame: Extract<RelayFrame, { type: 'pair-grant' }>): void;
  close(code: number, reason: string): void;
}

export interface DeviceAdminDeps {
  readonly store: RelayStore;
  readonly config: RelayConfig;
  readonly log: Logger;
  /** Registrations, revocations and pairing steps are told here. */
  readonly events: RelayEvents;
  readonly now: () => number;
  readonly pairings: PairingRegistry<PairingPeer>;
  readonly user: UserId;
  readonly device: DeviceRecord;
  /** This connection, as a pairing peer. */
  readonly self: PairingPeer;
  send(frame: RelayFrame, lane: number): void;
  /** A frame refused (counts against the bad-frame budget); `frame` names its type. */
  badFrame(error: KeelError, frame: RefusedFrame): void;
  abuse(): void;
  /** A device was registered: tell the user's other connections. */
  announceDevice(device: DeviceRecord): void;
  toUser(frame: RelayFrame, lane: number): void;
  /** Cuts off every connection of a revoked device of the user (4003), after `notice` when there is one. */
  cutOffDevice(device: DeviceId, notice: RevokedFrame | undefined): void;
  /** Devices of the user were revoked: each gets its notice and is cut off, and the user's other connections are told, in order. */
  devicesRevoked(notices: readonly RevokedFrame[]): void;
}

/** The registration bounds of this relay. */
export const deviceLimits = (config: RelayConfig): DeviceLimits => ({ maxLive: config.maxDevicesPerUser, maxTotal: config.maxRegistrationsPerUser });

/**
 * What an authenticated device may change about its user's devices: register a device it
 * certified, vouch for one, revoke one, publish a key epoch, and run a pairing. Every record it
 * leaves behind is bounded (devices, vouches, epochs, pairing sessions), and every change needs
 * a signature of a live device of the user.
 */
export class DeviceAdmin {
  readonly #deps: DeviceAdminDeps;
  /**
   * The type of the frame being handled, for refusals. The work queue runs one step of a
   * connection at a time, so frames of one DeviceAdmin never interleave.
   */
  #frame: RefusedFrame = 'unknown';

  constructor(deps: DeviceAdminDeps) {
    this.#deps = deps;
  }

  #bad(error: KeelError): void {
    this.#deps.badFrame(error, this.#frame);
  }

  async handle(frame: Extract<ClientFrame, { type: 'register' | 'revoke' | 'epoch' | 'vouch' | 'pair-open' | 'pair-grant' | 'pair-refuse' }>): Promise<void> {
    this.#frame = frame.type;
    switch (frame.type) {
      case 'register':
        return this.#register(frame.cert);
      case 'vouch':
        return this.#vouch(frame.cert);
      case 'revoke':
        return this.#revoke(frame.revocation);
      case 'epoch':
        return this.#epoch(frame.record);
      case 'pair-open':
      case 'pair-grant':
      case 'pair-refuse':
        return this.#pairing(frame);
      default:
        return assertNever(frame);
    }
  }

  /** Registers a device this device (or another live device of the user) certified. */
  async #register(cert: DeviceCertificate): Promise<void> {
    const { store, user } = this.#deps;
    const verified = await verifyPresentedCertificate(store, cert, [], user, cert.device);
    if (!verified.ok || cert.issuer === null) {
      return this.#bad({ code: ErrorCode.BAD_CERTIFICATE, message: verified.ok ? 'a registered user adds devices by device certificates' : verified.error.message });
    }
    const link = verified.value[verified.value.length - 1]!;
    const at = this.#deps.now();
    const registered = await store.registerDevice(link.cert, link.deviceKey, link.userKey, at, deviceLimits(this.#deps.config));
    if (!registered.ok) return this.#bad(registered.error);
    this.#deps.log.log('info', 'device registered', { user, device: registered.value.deviceId, issuer: cert.issuer });
    // Registering a device the store holds already changes nothing: only a new one is told.
    if (registered.value.registeredAt === at) this.#deps.events.emit('deviceRegistered', { user, device: registered.value.deviceId });
    this.#deps.announceDevice(registered.value);
    this.#deps.send({ type: 'device', cert: registered.value.cert }, 10);
  }

  /**
   * A second issuer for an existing device of the user: this device signed a certificate for
   * it. A vouched device stays live when the device that registered it is revoked.
   */
  async #vouch(cert: DeviceCertificate): Promise<void> {
    const { user, device, store, config } = this.#deps;
    if (cert.user !== user || cert.issuer !== device.deviceId) {
      return this.#bad({ code: ErrorCode.BAD_CERTIFICATE, message: 'a vouch is signed by this device, for a device of its own user' });
    }
    const ids = checkCertificateIds(cert);
    if (!ids.ok) return this.#bad(ids.error);
    if (!verifyCertificateSignature(cert, device.publicKey)) {
      this.#deps.abuse();
      return this.#bad({ code: ErrorCode.BAD_SIGNATURE, message: 'the vouch is not signed by this device' });
    }
    const stored = await store.putVouch(cert, this.#deps.now(), config.maxDevicesPerUser);
    if (!stored.ok) return this.#bad(stored.error);
    this.#deps.log.log('info', 'device vouched for', { user, device: cert.device, by: device.deviceId });
    this.#deps.toUser({ type: 'vouched', cert }, 10);
  }

  /**
   * Revokes another device of the user: refused from now on, cut off at once — and with it the
   * devices it registered that no live device vouches for (see RelayStore.revokeDevice).
   */
  async #revoke(revocation: Revocation): Promise<void> {
    const { user, device } = this.#deps;
    if (revocation.user !== user || revocation.issuer !== device.deviceId || !verifyRevocation(revocation, device.publicKey)) {
      this.#deps.abuse();
      return this.#bad({ code: ErrorCode.BAD_SIGNATURE, message: 'a revocation must be signed by this device, for its own user' });
    }
    const revoked = await this.#deps.store.revokeDevice(revocation, this.#deps.now());
    if (!revoked.ok) {
      if (revoked.error.code === ErrorCode.DEVICE_REVOKED) {
        // This device was revoked while its frames waited in the queue.
        this.#deps.cutOffDevice(device.deviceId, revokedNotice(device.deviceId, await this.#deps.store.revocationRecords(device.deviceId)));
      }
      return this.#bad(revoked.error);
    }
    const [target, ...cascade] = revoked.value;
    this.#deps.log.log('info', 'device revoked', { user, device: revocation.device, by: device.deviceId, cascade: cascade.length });
    for (const gone of revoked.value) this.#deps.events.emit('deviceRevoked', { user, device: gone.deviceId });
    // The cascade first, the target last: a device that waits for the target's frame has seen
    // them all. Each carries this revocation: a cascaded device's chain ends at its target.
    this.#deps.devicesRevoked([...cascade, target!].map((gone): RevokedFrame => ({ type: 'revoked', device: gone.deviceId, revocation })));
  }

  /**
   * A new key epoch, sealed to the user's devices; every online device gets it at once. Its
   * size is bounded by the user's devices (each wrap names a distinct device of this user) and
   * the number of epochs by the store.
   */
  async #epoch(record: EpochRecord): Promise<void> {
    const { user, device, store, config } = this.#deps;
    if (record.user !== user || record.issuer !== device.deviceId || !verifyEpochRecord(record, device.publicKey)) {
      this.#deps.abuse();
      return this.#bad({ code: ErrorCode.BAD_SIGNATURE, message: 'an epoch record must be signed by this device, for its own user' });
    }
    const devices = await store.listDevices(user);
    // Key epochs come only from live devices: a revoked one's queued frames publish nothing.
    if (devices.find((d) => d.deviceId === device.deviceId)?.revokedAt !== null) {
      return this.#bad({ code: ErrorCode.DEVICE_REVOKED, message: 'this device was revoked' });
    }
    const recipients = new Set(record.wraps.map((w) => w.device));
    if (recipients.size !== record.wraps.length || recipients.size > config.maxDevicesPerUser) {
      return this.#bad({ code: ErrorCode.LIMIT_EXCEEDED, message: `an epoch record wraps its secret once for each of at most ${config.maxDevicesPerUser} devices` });
    }
    const known = new Set(devices.map((d) => d.deviceId));
    if ([...recipients].some((id) => !known.has(id))) {
      return this.#bad({ code: ErrorCode.UNKNOWN_DEVICE, message: 'an epoch record may be sealed only to devices of this user' });
    }
    const stored = await store.putEpoch(record, this.#deps.now(), config.maxEpochsPerUser);
    if (!stored.ok) return this.#bad(stored.error);
    this.#deps.log.log('info', 'key epoch stored', { user, epoch: record.epoch, by: device.deviceId });
    this.#deps.toUser({ type: 'epoch', record }, 10);
  }

  async #pairing(frame: Extract<ClientFrame, { type: 'pair-open' | 'pair-grant' | 'pair-refuse' }>): Promise<void> {
    const { pairings, self, user } = this.#deps;
    if (frame.type === 'pair-open') {
      const opened = pairings.open(frame.id, user, self, frame.ttlMs, this.#deps.config.maxPairingsPerDevice);
      if (!opened.ok) {
        this.#deps.events.emit('pairing', { outcome: 'failed', code: opened.error.code });
        return this.#bad(opened.error);
      }
      this.#deps.events.emit('pairing', { outcome: 'opened' });
      this.#deps.send({ type: 'pair-opened', id: frame.id, expiresAt: opened.value.expiresAt }, 10);
      return;
    }
    const session = pairings.take(frame.id, self);
    if (!session.ok) {
      this.#deps.events.emit('pairing', { outcome: 'failed', code: session.error.code });
      return this.#bad(session.error);
    }
    const joiner = session.value.joiner;
    if (!joiner) return;
    if (frame.type === 'pair-grant') {
      this.#deps.log.log('info', 'pairing granted', { user, device: this.#deps.device.deviceId });
      joiner.grantAndClose(frame);
    } else {
      this.#deps.events.emit('pairing', { outcome: 'refused', code: ErrorCode.PAIRING_REFUSED });
      joiner.close(CloseCode.PAIRING_FAILED, ErrorCode.PAIRING_REFUSED);
    }
  }
}

const assertNever = (value: never): never => {
  throw new Error(`unhandled device frame ${JSON.stringify(value)}`);
};
