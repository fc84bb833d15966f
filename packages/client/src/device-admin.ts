// Revoking and vouching for the user's other devices: the signed records go through the trust
// book (device-trust.ts), the relay's answers only tell when to stop waiting. KeelClient
// forwards `revoked`, `vouched` and error frames here.
import { type ClientFrame, type DeviceId, type KeelError, type RelayFrame, ErrorCode, certifyDevice, fromB64 } from '@keel/engine';
import type { DeviceTrust } from './device-trust.js';
import type { Identity } from './identity.js';

export interface DeviceAdminDeps {
  readonly identity: Identity;
  readonly trust: DeviceTrust;
  /** Sends a frame if the link is authenticated; false otherwise. */
  readonly send: (frame: ClientFrame) => boolean;
  /** Whether the link is authenticated now. */
  readonly online: () => boolean;
  readonly now: () => number;
  /** How long the relay has to confirm a revocation's cascade, a rotation or a vouch. */
  readonly confirmMs: number;
  readonly onError: (error: KeelError) => void;
}

const toError = (e: KeelError): Error => Object.assign(new Error(`${e.code}: ${e.message}`), { code: e.code });

export class DeviceAdmin {
  readonly #deps: DeviceAdminDeps;
  readonly #revokeWaiters = new Map<DeviceId, () => void>();
  #vouchWaiter: { device: DeviceId; resolve: () => void; reject: (e: Error) => void } | undefined;

  constructor(deps: DeviceAdminDeps) {
    this.#deps = deps;
  }

  /**
   * Revokes another device of this user: the relay disconnects and refuses it at once — with
   * the devices it registered that no live device vouched for — and a new key epoch, sealed
   * only to the devices that remain (and to the recovery key), protects everything written next.
   * Resolves to the epoch written under from now on.
   */
  async revoke(device: DeviceId): Promise<number> {
    const { trust, confirmMs } = this.#deps;
    if (!this.#deps.online()) throw new Error('revocation needs a connection to the relay');
    // The relay announces the devices the revocation took with it before the target itself;
    // the trust book computes the same cascade, and waiting lets vouches the relay knows arrive.
    const announced = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, confirmMs);
      this.#revokeWaiters.set(device, () => {
        clearTimeout(timer);
        resolve();
      });
    });
    // Our own signed record, believed at once: the book computes the cascade, the epochs the
    // revoked devices held turn dirty, and a rotation to the remaining live devices starts.
    const rotation = trust.revoke(device);
    await announced;
    this.#revokeWaiters.delete(device);
    if (rotation) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([rotation.echoed, new Promise((resolve) => (timer = setTimeout(resolve, confirmMs)))]);
      clearTimeout(timer);
      return rotation.epoch;
    }
    return trust.writeEpoch;
  }

  /**
   * Vouches for another live device of this user: signs a certificate for it as a second
   * issuer, so it stays live if the device that registered it is revoked (a stolen device
   * takes down only what nobody else vouched for). Resolves once the relay stored it.
   */
  async vouch(device: DeviceId): Promise<void> {
    const { trust, identity } = this.#deps;
    if (!this.#deps.online()) throw new Error('vouching needs a connection to the relay');
    if (this.#vouchWaiter) throw new Error('one vouch at a time');
    const target = trust.certificateOf(device);
    if (!target || !trust.view.live.has(device)) throw new Error(`${device} is not a live device of this user that this device verified`);
    const cert = certifyDevice(identity.user, identity.device, fromB64(target.deviceKey), this.#deps.now());
    trust.add({ certs: [cert] });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#vouchWaiter = undefined;
        reject(new Error('TIMEOUT: the relay did not confirm the vouch'));
      }, this.#deps.confirmMs);
      const done = (error?: Error) => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve();
      };
      this.#vouchWaiter = { device, resolve: () => done(), reject: (error) => done(error) };
      this.#deps.send({ type: 'vouch', cert });
    });
  }

  /** The relay stored a vouch: ours, if it names the device we vouched for with us as issuer. */
  onVouched(frame: Extract<RelayFrame, { type: 'vouched' }>): void {
    if (this.#vouchWaiter?.device === frame.cert.device && frame.cert.issuer === this.#deps.identity.device.deviceId) {
      this.#vouchWaiter.resolve();
      this.#vouchWaiter = undefined;
    }
  }

  /** The relay answers a refused vouch with an error frame; nothing else is in flight for it. */
  onRelayError(error: KeelError & { readonly final?: boolean }): void {
    if (!error.final && this.#vouchWaiter) {
      this.#vouchWaiter.reject(toError(error));
      this.#vouchWaiter = undefined;
    }
  }

  /**
   * Believes a `revoked` frame only for its signed record. One that claims a device this device
   * holds live without a record that verifies is reported and changes nothing.
   */
  onRevoked(frame: Extract<RelayFrame, { type: 'revoked' }>): void {
    const { trust, identity } = this.#deps;
    trust.add({ revocations: frame.revocation ? [frame.revocation] : [], reset: frame.reset });
    // Only a hint for timing: our own revocation's cascade was announced.
    this.#revokeWaiters.get(frame.device)?.();
    if (trust.view.live.has(frame.device) && frame.device !== identity.device.deviceId) {
      this.#deps.onError({ code: ErrorCode.BAD_SIGNATURE, message: `the relay says ${frame.device} is revoked, with no signed record that shows it` });
    }
  }
}
