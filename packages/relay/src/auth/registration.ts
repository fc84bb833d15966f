import {
  type DeviceCertificate,
  type DeviceId,
  ErrorCode,
  type Result,
  type UserId,
  WireLimits,
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
 * Checks the certificate a new device presents in `hello`, with the chain of issuer
 * certificates it brought: ids match keys, it names the user and device that say hello, and
 * every link is signed by the user key, by the user's recovery key (as the relay keeps it, never
 * as a certificate claims it) or by a live device of that user — registered here or earlier in
 * the chain. Returns what must be registered, issuers first. Whether a user-key certificate is
 * still acceptable (only for a user's first device, which must name a recovery key) is decided
 * atomically by the store at registration.
 */
export const verifyPresentedCertificate = async (
  store: RelayStore,
  cert: DeviceCertificate,
  chain: readonly DeviceCertificate[],
  user: UserId,
  device: DeviceId,
): Promise<Result<VerifiedCertificate[]>> => {
  if (cert.user !== user || cert.device !== device) return err(ErrorCode.BAD_CERTIFICATE, 'certificate is for another user or device');
  const byDevice = new Map<DeviceId, DeviceCertificate>(chain.map((c) => [c.device, c]));
  const leafFirst: VerifiedCertificate[] = [];
  let current: DeviceCertificate = cert;
  for (let depth = 0; depth <= WireLimits.maxChain; depth++) {
    if (current.user !== user) return err(ErrorCode.BAD_CERTIFICATE, 'certificate chain crosses users');
    const ids = checkCertificateIds(current);
    if (!ids.ok) return ids;
    const verified: VerifiedCertificate = { cert: current, deviceKey: ids.value.deviceKey, userKey: ids.value.userKey };
    if (current.issuer === null) {
      if (!verifyCertificateSignature(current, ids.value.userKey)) return err(ErrorCode.BAD_CERTIFICATE, 'certificate signature does not verify');
      // Without one, a stolen device would lock the owner out for good (docs/recovery.md).
      if (current.recoveryKey === undefined) return err(ErrorCode.BAD_CERTIFICATE, "a new user's first device must name the user's recovery key");
      return ok([...leafFirst, verified].reverse());
    }
    if (current.issuer === 'recovery') {
      const recovery = await store.getRecovery(user);
      if (!recovery) return err(ErrorCode.RECOVERY_UNKNOWN, 'this user has no recovery key');
      if (!verifyCertificateSignature(current, recovery.recoveryKey)) return err(ErrorCode.BAD_CERTIFICATE, 'certificate is not signed by the recovery key');
      return ok([...leafFirst, verified].reverse());
    }
    const issuer = await store.getDevice(current.issuer);
    if (issuer) {
      if (issuer.userId !== user) return err(ErrorCode.BAD_CERTIFICATE, 'certificate issuer is not a device of this user');
      if (issuer.revokedAt !== null) return err(ErrorCode.BAD_CERTIFICATE, 'certificate issuer is revoked');
      if (!verifyCertificateSignature(current, issuer.publicKey)) return err(ErrorCode.BAD_CERTIFICATE, 'certificate signature does not verify');
      return ok([...leafFirst, verified].reverse());
    }
    const next = byDevice.get(current.issuer);
    if (!next) return err(ErrorCode.BAD_CERTIFICATE, 'certificate issuer is unknown to this relay and not in the chain');
    const nextIds = checkCertificateIds(next);
    if (!nextIds.ok) return nextIds;
    if (!verifyCertificateSignature(current, nextIds.value.deviceKey)) return err(ErrorCode.BAD_CERTIFICATE, 'certificate signature does not verify');
    leafFirst.push(verified);
    current = next;
  }
  return err(ErrorCode.BAD_CERTIFICATE, `certificate chain longer than ${WireLimits.maxChain}`);
};
