import { entropyToMnemonic, mnemonicToEntropy } from '@scure/bip39';
import { wordlist } from '@scure/bip39/wordlists/english.js';
import * as z from 'zod';
import { encodeFields, fromB64, toB64 } from '../protocol/bytes.js';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import { type DeviceId, DeviceIdSchema, type UserId, UserIdSchema } from '../protocol/ids.js';
import { Domain } from './domains.js';
import { getSodium } from './sodium.js';
import { verifyDetached } from './signature.js';

/**
 * The recovery key: the one authority that tells the owner from a thief. Every device holds the
 * root key, so a stolen device can do whatever the root key can; the recovery key is created
 * with the identity, shown once as 12 words, and kept off every device. It certifies a device
 * enrolled from nothing (`issuer: 'recovery'`), signs reset statements that revoke every other
 * device, and opens the root key and epoch secrets sealed to it.
 */

/** 128 bits: 12 BIP39 words (11 bits each, 4 of them a checksum). */
export const RECOVERY_ENTROPY_BYTES = 16;
/** The compact form for a QR code: this prefix, then base64url of the 16 bytes. */
export const RECOVERY_CODE_PREFIX = 'keel-recovery:';
/** Most devices one reset statement may keep. */
export const MAX_RESET_KEEP = 32;

export interface RecoverySecret {
  /** The 16 bytes everything else derives from. */
  readonly entropy: Uint8Array;
  /** 12 BIP39 English words, lower case, separated by single spaces. */
  readonly phrase: string;
  /** `keel-recovery:` + base64url(entropy), for a QR code. */
  readonly code: string;
}

/** The recovery key pair (Ed25519), derived from the recovery entropy. */
export interface RecoveryKeys {
  readonly publicKey: Uint8Array;
  readonly secretKey: Uint8Array;
}

const secretOf = (entropy: Uint8Array): RecoverySecret => ({
  entropy,
  phrase: entropyToMnemonic(entropy, wordlist),
  code: RECOVERY_CODE_PREFIX + toB64(entropy),
});

/** A fresh recovery secret, made once with the identity and shown to the person once. */
export const createRecoverySecret = (): RecoverySecret => secretOf(getSodium().randombytes_buf(RECOVERY_ENTROPY_BYTES));

const invalid = (message: string) => err(ErrorCode.RECOVERY_PHRASE_INVALID, message);

/**
 * Reads what a person typed or scanned: the 12 words (any case, any whitespace between them)
 * or the `keel-recovery:` code. The words' checksum is verified; anything else is a typed error.
 */
export const parseRecoveryPhrase = (input: string): Result<RecoverySecret> => {
  if (typeof input !== 'string' || input.length > 1024) return invalid('a recovery phrase is 12 words or a keel-recovery: code');
  const trimmed = input.normalize('NFKD').trim();
  if (trimmed.toLowerCase().startsWith(RECOVERY_CODE_PREFIX)) {
    const body = trimmed.slice(RECOVERY_CODE_PREFIX.length).trim();
    // 16 bytes are 22 base64url characters; the last carries 4 padding bits that must be zero.
    if (!/^[A-Za-z0-9_-]{22}$/.test(body)) return invalid('the recovery code is malformed');
    const entropy = fromB64(body);
    if (entropy.length !== RECOVERY_ENTROPY_BYTES || toB64(entropy) !== body) return invalid('the recovery code is malformed');
    return ok(secretOf(entropy));
  }
  const words = trimmed.toLowerCase().split(/\s+/u).filter((w) => w.length > 0);
  if (words.length !== 12) return invalid(`a recovery phrase has 12 words, not ${words.length}`);
  const unknown = words.findIndex((w) => !wordlist.includes(w));
  if (unknown >= 0) return invalid(`word ${unknown + 1} is not a recovery word`);
  let entropy: Uint8Array;
  try {
    entropy = mnemonicToEntropy(words.join(' '), wordlist);
  } catch {
    return invalid('the recovery phrase does not check out: a word is wrong or out of order');
  }
  return ok(secretOf(entropy));
};

/** The recovery key pair of a recovery secret; deterministic, so the 12 words are all one needs. */
export const deriveRecoveryKeys = (entropy: Uint8Array): RecoveryKeys => {
  if (entropy.length !== RECOVERY_ENTROPY_BYTES) throw new RangeError(`recovery entropy must be ${RECOVERY_ENTROPY_BYTES} bytes`);
  const s = getSodium();
  const seed = s.crypto_generichash(32, encodeFields([Domain.recoveryKey, entropy]), null);
  const pair = s.crypto_sign_seed_keypair(seed);
  return { publicKey: pair.publicKey, secretKey: pair.privateKey };
};

// ── sealing to the recovery key ─────────────────────────────────────────────────────────

const b64 = (max: number) => z.string().max(max).regex(/^[A-Za-z0-9_-]*$/, 'not base64url');

/** A secret sealed to the recovery key (crypto_box_seal to its X25519 form), base64url. */
export const RecoverySealedSchema = b64(512).min(64);

/** Seals `payload` (already bound to its purpose) to the recovery public key. */
export const sealToRecoveryKey = (payload: Uint8Array, recoveryPublicKey: Uint8Array): string => {
  const s = getSodium();
  return toB64(s.crypto_box_seal(payload, s.crypto_sign_ed25519_pk_to_curve25519(recoveryPublicKey)));
};

/**
 * Opens a box sealed to the recovery key and checks it is `expected(secret)`: the last `length`
 * bytes are the secret, the rest must be the label and ids it was bound to.
 */
const openSealed = (sealed: string, recovery: RecoveryKeys, length: number, expected: (secret: Uint8Array) => Uint8Array): Result<Uint8Array> => {
  const s = getSodium();
  let opened: Uint8Array;
  try {
    opened = s.crypto_box_seal_open(
      fromB64(sealed),
      s.crypto_sign_ed25519_pk_to_curve25519(recovery.publicKey),
      s.crypto_sign_ed25519_sk_to_curve25519(recovery.secretKey),
    );
  } catch {
    return err(ErrorCode.DECRYPT_FAILED, 'does not open with this recovery key');
  }
  const secret = opened.slice(opened.length - length);
  const bound = expected(secret);
  if (bound.length !== opened.length || !s.memcmp(opened, bound)) return err(ErrorCode.DECRYPT_FAILED, 'sealed for another user or purpose');
  return ok(secret);
};

const escrowBytes = (user: UserId, rootKey: Uint8Array): Uint8Array => encodeFields([Domain.rootEscrow, user, rootKey]);

/** The root key sealed to the recovery key and bound to the user: what the relay keeps as escrow. */
export const sealRootKeyEscrow = (user: UserId, rootKey: Uint8Array, recoveryPublicKey: Uint8Array): string =>
  sealToRecoveryKey(escrowBytes(user, rootKey), recoveryPublicKey);

/**
 * Opens the escrow. The caller still checks that the root key derives `user` (the relay could
 * hand over another user's escrow, which the binding to `user` already refuses).
 */
export const openRootKeyEscrow = (escrow: string, user: UserId, recovery: RecoveryKeys): Result<Uint8Array> =>
  openSealed(escrow, recovery, 32, (rootKey) => escrowBytes(user, rootKey));

export const epochRecoveryWrapBytes = (user: UserId, epoch: number, secret: Uint8Array): Uint8Array =>
  encodeFields([Domain.epochRecoveryWrap, user, epoch, secret]);

/** Opens an epoch secret sealed to the recovery key (see `EpochRecord.recovery`). */
export const openEpochRecoveryWrap = (sealed: string, user: UserId, epoch: number, recovery: RecoveryKeys): Result<Uint8Array> =>
  openSealed(sealed, recovery, 32, (secret) => epochRecoveryWrapBytes(user, epoch, secret));

// ── reset statements ────────────────────────────────────────────────────────────────────

/**
 * "Every device of this user but `keep` is revoked; the devices in `keep` are live." Signed by
 * the recovery key; `gen` is the user's recovery generation, last + 1, so the relay applies a
 * statement once and never again.
 */
export const RecoveryResetSchema = z.strictObject({
  user: UserIdSchema,
  keep: z
    .array(DeviceIdSchema)
    .min(1)
    .max(MAX_RESET_KEEP)
    .refine((keep) => new Set(keep).size === keep.length, 'the devices to keep must be distinct'),
  gen: z.number().int().min(1).max(0x7fff_ffff),
  at: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  sig: b64(86).length(86),
});
export type RecoveryReset = z.infer<typeof RecoveryResetSchema>;

const resetBytes = (r: Omit<RecoveryReset, 'sig'>): Uint8Array =>
  encodeFields([Domain.recoveryReset, r.user, r.gen, r.at, r.keep.length, ...r.keep]);

export const signRecoveryReset = (user: UserId, keep: readonly DeviceId[], gen: number, recovery: RecoveryKeys, at: number): RecoveryReset => {
  const body = { user, keep: [...keep], gen, at };
  return { ...body, sig: toB64(getSodium().crypto_sign_detached(resetBytes(body), recovery.secretKey)) };
};

export const verifyRecoveryReset = (reset: RecoveryReset, recoveryPublicKey: Uint8Array): boolean =>
  verifyDetached(reset.sig, () => resetBytes(reset), recoveryPublicKey);
