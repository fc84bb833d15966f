import {
  type DeviceCertificate,
  type DeviceId,
  ErrorCode,
  type Result,
  type UserId,
  checkCertificateIds,
  err,
  ok,
  verifyCertificateSignature,
} from '@keel/engine';
import type { RelayStore } from '../storage/relay-store.js';

export interface VerifiedCertificate {
  readonly cert: DeviceCertificate;
  readonly deviceKey: Uint8Array;
  readonly userKey: Uint8Array;
}

/**
 * Checks a certificate a new device presents in `hello`: ids match keys, it names the user and
 * device that say hello, and it is signed by the user key or by a live device of that user.
 * Whether a user-key certificate is still acceptable (only for a user's first device) is decided
 * atomically by the store at registration.
 */
export const verifyPresentedCertificate = async (
  store: RelayStore,
  cert: DeviceCertificate,
  user: UserId,
  device: DeviceId,
): Promise<Result<VerifiedCertificate>> => {
  if (cert.user !== user || cert.device !== device) return err(ErrorCode.BAD_CERTIFICATE, 'certificate is for another user or device');
  const ids = checkCertificateIds(cert);
  if (!ids.ok) return ids;
  let issuerKey: Uint8Array;
  if (cert.issuer === null) {
    issuerKey = ids.value.userKey;
  } else {
    const issuer = await store.getDevice(cert.issuer);
    if (!issuer || issuer.userId !== user) return err(ErrorCode.BAD_CERTIFICATE, 'certificate issuer is not a device of this user');
    if (issuer.revokedAt !== null) return err(ErrorCode.BAD_CERTIFICATE, 'certificate issuer is revoked');
    issuerKey = issuer.publicKey;
  }
  if (!verifyCertificateSignature(cert, issuerKey)) return err(ErrorCode.BAD_CERTIFICATE, 'certificate signature does not verify');
  return ok({ cert, deviceKey: ids.value.deviceKey, userKey: ids.value.userKey });
};
