import { encodeFields, fromB64, toB64 } from '../protocol/bytes.js';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import type { DeviceCertificate } from '../protocol/frames.js';
import type { DeviceId, UserId } from '../protocol/ids.js';
import { Domain } from './domains.js';
import { type DeviceKeys, type UserKeys, deviceIdFromKey, userIdFromKey } from './keys.js';
import type { RecoveryKeys } from './recovery.js';
import { getSodium } from './sodium.js';
import { verifyDetached } from './signature.js';

/**
 * The signed bytes. `recoveryKey` is a field only when present, so certificates made before
 * recovery keys existed still verify; with it, a different tuple (one more field) is signed.
 */
const certificateBytes = (c: Omit<DeviceCertificate, 'sig'>): Uint8Array =>
  encodeFields([
    Domain.deviceCertificate,
    c.user,
    c.userKey,
    c.device,
    c.deviceKey,
    c.issuer ?? '',
    c.issuedAt,
    ...(c.recoveryKey !== undefined ? [c.recoveryKey] : []),
  ]);

/**
 * The user's key certifies the user's first device and, with it, the user's recovery public
 * key (the relay requires one for a new user; it is optional here for tests of older data).
 */
export const certifyFirstDevice = (
  user: UserKeys,
  device: Pick<DeviceKeys, 'publicKey'>,
  issuedAt: number,
  recoveryPublicKey?: Uint8Array,
): DeviceCertificate => {
  const body = {
    user: user.userId,
    userKey: toB64(user.userPublicKey),
    device: deviceIdFromKey(device.publicKey),
    deviceKey: toB64(device.publicKey),
    issuer: null,
    issuedAt,
    ...(recoveryPublicKey ? { recoveryKey: toB64(recoveryPublicKey) } : {}),
  };
  return { ...body, sig: toB64(getSodium().crypto_sign_detached(certificateBytes(body), user.userSecretKey)) };
};

/** The recovery key certifies a device enrolled from nothing but the 12 words. */
export const certifyByRecovery = (
  user: { readonly userId: UserId; readonly userPublicKey: Uint8Array },
  recovery: RecoveryKeys,
  devicePublicKey: Uint8Array,
  issuedAt: number,
): DeviceCertificate => {
  const body = {
    user: user.userId,
    userKey: toB64(user.userPublicKey),
    device: deviceIdFromKey(devicePublicKey),
    deviceKey: toB64(devicePublicKey),
    issuer: 'recovery' as const,
    issuedAt,
  };
  return { ...body, sig: toB64(getSodium().crypto_sign_detached(certificateBytes(body), recovery.secretKey)) };
};

/** An already registered device certifies a new device of the same user. */
export const certifyDevice = (
  user: Pick<UserKeys, 'userId' | 'userPublicKey'>,
  issuer: DeviceKeys,
  newDevicePublicKey: Uint8Array,
  issuedAt: number,
): DeviceCertificate => {
  const body = {
    user: user.userId,
    userKey: toB64(user.userPublicKey),
    device: deviceIdFromKey(newDevicePublicKey),
    deviceKey: toB64(newDevicePublicKey),
    issuer: issuer.deviceId,
    issuedAt,
  };
  return { ...body, sig: toB64(getSodium().crypto_sign_detached(certificateBytes(body), issuer.secretKey)) };
};

/**
 * Checks what a certificate says about itself: the user id is the hash of the user key, the
 * device id the hash of the device key. Says nothing about the issuer (see below).
 */
export const checkCertificateIds = (cert: DeviceCertificate): Result<{ deviceKey: Uint8Array; userKey: Uint8Array }> => {
  const userKey = fromB64(cert.userKey);
  const deviceKey = fromB64(cert.deviceKey);
  if (userIdFromKey(userKey) !== cert.user) return err(ErrorCode.BAD_CERTIFICATE, 'user id does not match the user key');
  if (deviceIdFromKey(deviceKey) !== cert.device) return err(ErrorCode.BAD_CERTIFICATE, 'device id does not match the device key');
  if (cert.issuer === cert.device) return err(ErrorCode.BAD_CERTIFICATE, 'a device cannot certify itself');
  if (cert.recoveryKey !== undefined && cert.issuer !== null) return err(ErrorCode.BAD_CERTIFICATE, "only a user's first device names the recovery key");
  return ok({ deviceKey, userKey });
};

/** Verifies the certificate's signature by `issuerKey` (the user key when `issuer` is null, the recovery key when 'recovery'). */
export const verifyCertificateSignature = (cert: DeviceCertificate, issuerKey: Uint8Array): boolean =>
  verifyDetached(cert.sig, () => certificateBytes(cert), issuerKey);

/**
 * Verifies a set of certificates for `userId` and returns the device keys they establish.
 * A certificate counts only if it is signed by the user key, by the user's recovery key (when
 * `recoveryKey` is given: the one this device was handed, never one a certificate names), or
 * by a device that is itself established; anything else (forged, orphaned) is left out.
 */
export const verifyCertificateChain = (
  certs: readonly DeviceCertificate[],
  userId: UserId,
  recoveryKey?: Uint8Array,
): Map<DeviceId, Uint8Array> => {
  const established = new Map<DeviceId, Uint8Array>();
  const pending = certs.filter((c) => c.user === userId);
  let progressed = true;
  while (progressed && pending.length > 0) {
    progressed = false;
    for (let i = pending.length - 1; i >= 0; i--) {
      const cert = pending[i]!;
      const ids = checkCertificateIds(cert);
      if (!ids.ok) {
        pending.splice(i, 1);
        continue;
      }
      const issuerKey = cert.issuer === null ? ids.value.userKey : cert.issuer === 'recovery' ? recoveryKey : established.get(cert.issuer);
      if (!issuerKey) {
        // No recovery key to check it with: it can never count.
        if (cert.issuer === 'recovery') pending.splice(i, 1);
        continue;
      }
      pending.splice(i, 1);
      if (verifyCertificateSignature(cert, issuerKey)) {
        established.set(cert.device, ids.value.deviceKey);
        progressed = true;
      }
    }
  }
  return established;
};
