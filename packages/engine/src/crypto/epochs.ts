import * as z from 'zod';
import { encodeFields, fromB64, toB64 } from '../protocol/bytes.js';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import { DeviceIdSchema, type DeviceId, UserIdSchema, type UserId } from '../protocol/ids.js';
import { Domain } from './domains.js';
import type { DeviceKeys } from './keys.js';
import { RecoverySealedSchema, epochRecoveryWrapBytes, sealToRecoveryKey } from './recovery.js';
import { getSodium } from './sodium.js';
import { verifyDetached } from './signature.js';

const b64 = (max: number) => z.string().max(max).regex(/^[A-Za-z0-9_-]*$/, 'not base64url');

/** Most devices one epoch record can name. */
export const MAX_EPOCH_RECIPIENTS = 256;

/**
 * A new key epoch of a user: a fresh random secret, sealed to each device that keeps access
 * (never to a revoked one), signed by the device that rotated it. Documents written from then
 * on use keys derived from it, so a revoked device cannot read them even with the root key.
 */
export const EpochRecordSchema = z.strictObject({
  user: UserIdSchema,
  epoch: z.number().int().min(1).max(0x7fff_ffff),
  issuer: DeviceIdSchema,
  issuedAt: z.number().int().min(0),
  wraps: z.array(z.strictObject({ device: DeviceIdSchema, sealed: b64(512) })).min(1).max(MAX_EPOCH_RECIPIENTS),
  /**
   * The secret sealed to the user's recovery key too, so a device enrolled from the 12 words
   * reads what was written under this epoch. Absent in records of identities without one.
   */
  recovery: RecoverySealedSchema.optional(),
  sig: b64(86).length(86),
});
export type EpochRecord = z.infer<typeof EpochRecordSchema>;

/** A signed statement that a device of the user is revoked. */
export const RevocationSchema = z.strictObject({
  user: UserIdSchema,
  device: DeviceIdSchema,
  issuer: DeviceIdSchema,
  at: z.number().int().min(0),
  sig: b64(86).length(86),
});
export type Revocation = z.infer<typeof RevocationSchema>;

/**
 * The signed bytes. The recovery wrap is appended only when present (older records still
 * verify), after its own label: wraps are pairs, so the odd label and box cannot pass for one.
 */
const recordBytes = (r: Omit<EpochRecord, 'sig'>): Uint8Array =>
  encodeFields([
    Domain.epochRecord,
    r.user,
    r.epoch,
    r.issuer,
    r.issuedAt,
    ...r.wraps.flatMap((w) => [w.device, w.sealed]),
    ...(r.recovery !== undefined ? [Domain.epochRecoveryWrap, r.recovery] : []),
  ]);

const wrapBytes = (user: UserId, epoch: number, secret: Uint8Array): Uint8Array => encodeFields([Domain.epochWrap, user, epoch, secret]);

export const generateEpochSecret = (): Uint8Array => getSodium().randombytes_buf(32);

/**
 * Seals `secret` for every recipient (their Ed25519 keys, converted to X25519) and, given the
 * user's recovery public key, for the recovery key; signs the record.
 */
export const createEpochRecord = (
  user: UserId,
  epoch: number,
  issuer: DeviceKeys,
  secret: Uint8Array,
  recipients: ReadonlyMap<DeviceId, Uint8Array>,
  issuedAt: number,
  recoveryPublicKey?: Uint8Array,
): EpochRecord => {
  const s = getSodium();
  const payload = wrapBytes(user, epoch, secret);
  const wraps = [...recipients].map(([device, signKey]) => ({
    device,
    sealed: toB64(s.crypto_box_seal(payload, s.crypto_sign_ed25519_pk_to_curve25519(signKey))),
  }));
  const body = {
    user,
    epoch,
    issuer: issuer.deviceId,
    issuedAt,
    wraps,
    ...(recoveryPublicKey ? { recovery: sealToRecoveryKey(epochRecoveryWrapBytes(user, epoch, secret), recoveryPublicKey) } : {}),
  };
  return { ...body, sig: toB64(s.crypto_sign_detached(recordBytes(body), issuer.secretKey)) };
};

export const verifyEpochRecord = (record: EpochRecord, issuerPublicKey: Uint8Array): boolean =>
  verifyDetached(record.sig, () => recordBytes(record), issuerPublicKey);

/** This device's copy of the epoch secret, if the record has one for it. */
export const openEpochRecord = (record: EpochRecord, device: DeviceKeys): Result<Uint8Array> => {
  const wrap = record.wraps.find((w) => w.device === device.deviceId);
  if (!wrap) return err(ErrorCode.UNKNOWN_EPOCH, `epoch ${record.epoch} was not shared with this device`);
  const s = getSodium();
  try {
    const opened = s.crypto_box_seal_open(
      fromB64(wrap.sealed),
      s.crypto_sign_ed25519_pk_to_curve25519(device.publicKey),
      s.crypto_sign_ed25519_sk_to_curve25519(device.secretKey),
    );
    const secret = opened.slice(opened.length - 32);
    if (!s.memcmp(opened, wrapBytes(record.user, record.epoch, secret))) {
      return err(ErrorCode.DECRYPT_FAILED, 'epoch secret is bound to another user or epoch');
    }
    return ok(secret);
  } catch {
    return err(ErrorCode.DECRYPT_FAILED, `epoch ${record.epoch} does not open with this device key`);
  }
};

const revocationBytes = (r: Omit<Revocation, 'sig'>): Uint8Array => encodeFields([Domain.revocation, r.user, r.device, r.issuer, r.at]);

export const signRevocation = (user: UserId, device: DeviceId, issuer: DeviceKeys, at: number): Revocation => {
  const body = { user, device, issuer: issuer.deviceId, at };
  return { ...body, sig: toB64(getSodium().crypto_sign_detached(revocationBytes(body), issuer.secretKey)) };
};

export const verifyRevocation = (r: Revocation, issuerPublicKey: Uint8Array): boolean =>
  verifyDetached(r.sig, () => revocationBytes(r), issuerPublicKey);
