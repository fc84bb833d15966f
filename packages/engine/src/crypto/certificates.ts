import { encodeFields, fromB64, toB64 } from '../protocol/bytes.js';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import type { DeviceCertificate } from '../protocol/frames.js';
import type { DeviceId, UserId } from '../protocol/ids.js';
import { Domain } from './domains.js';
import { type DeviceKeys, type UserKeys, deviceIdFromKey, userIdFromKey } from './keys.js';
import { getSodium } from './sodium.js';

const certificateBytes = (c: Omit<DeviceCertificate, 'sig'>): Uint8Array =>
  encodeFields([Domain.deviceCertificate, c.user, c.userKey, c.device, c.deviceKey, c.issuer ?? '', c.issuedAt]);

/** The user's key certifies the user's first device. */
export const certifyFirstDevice = (user: UserKeys, device: Pick<DeviceKeys, 'publicKey'>, issuedAt: number): DeviceCertificate => {
  const body = {
    user: user.userId,
    userKey: toB64(user.userPublicKey),
    device: deviceIdFromKey(device.publicKey),
    deviceKey: toB64(device.publicKey),
    issuer: null,
    issuedAt,
  };
  return { ...body, sig: toB64(getSodium().crypto_sign_detached(certificateBytes(body), user.userSecretKey)) };
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
  return ok({ deviceKey, userKey });
};

/** Verifies the certificate's signature by `issuerKey` (the user key when `issuer` is null). */
export const verifyCertificateSignature = (cert: DeviceCertificate, issuerKey: Uint8Array): boolean => {
  try {
    return getSodium().crypto_sign_verify_detached(fromB64(cert.sig), certificateBytes(cert), issuerKey);
  } catch {
    return false;
  }
};

/**
 * Verifies a set of certificates for `userId` and returns the device keys they establish.
 * A certificate counts only if it is signed by the user key or by a device that is itself
 * established; anything else (a forged or orphaned certificate) is left out.
 */
export const verifyCertificateChain = (certs: readonly DeviceCertificate[], userId: UserId): Map<DeviceId, Uint8Array> => {
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
      const issuerKey = cert.issuer === null ? ids.value.userKey : established.get(cert.issuer);
      if (!issuerKey) continue;
      pending.splice(i, 1);
      if (verifyCertificateSignature(cert, issuerKey)) {
        established.set(cert.device, ids.value.deviceKey);
        progressed = true;
      }
    }
  }
  return established;
};
