import { encodeFields, toB64 } from '../protocol/bytes.js';
import type { DeviceId, DocId, UserId } from '../protocol/ids.js';
import { Domain, KdfContext } from './domains.js';
import { getSodium } from './sodium.js';

export const ROOT_KEY_BYTES = 32;

/** The user's keys, all derived from the root key that only the user's devices hold. */
export interface UserKeys {
  readonly userId: UserId;
  readonly rootKey: Uint8Array;
  /** Ed25519 key that certifies the user's first device. */
  readonly userPublicKey: Uint8Array;
  readonly userSecretKey: Uint8Array;
  /** Keyed-hash key for opaque document ids. */
  readonly docIdKey: Uint8Array;
}

export interface DeviceKeys {
  readonly deviceId: DeviceId;
  readonly publicKey: Uint8Array;
  readonly secretKey: Uint8Array;
}

export const generateRootKey = (): Uint8Array => getSodium().randombytes_buf(ROOT_KEY_BYTES);

/** The pseudonymous, self-certifying id of the user who owns `userPublicKey`. */
export const userIdFromKey = (userPublicKey: Uint8Array): UserId => {
  const s = getSodium();
  return `u_${toB64(s.crypto_generichash(32, encodeFields([Domain.userId, userPublicKey]), null))}` as UserId;
};

/** The id of the device that owns `devicePublicKey`. */
export const deviceIdFromKey = (devicePublicKey: Uint8Array): DeviceId =>
  `d_${toB64(getSodium().crypto_generichash(16, devicePublicKey, null))}` as DeviceId;

export const deriveUserKeys = (rootKey: Uint8Array): UserKeys => {
  if (rootKey.length !== ROOT_KEY_BYTES) throw new RangeError(`root key must be ${ROOT_KEY_BYTES} bytes`);
  const s = getSodium();
  const seed = s.crypto_kdf_derive_from_key(32, 1, KdfContext.userSigning, rootKey);
  const pair = s.crypto_sign_seed_keypair(seed);
  return {
    userId: userIdFromKey(pair.publicKey),
    rootKey,
    userPublicKey: pair.publicKey,
    userSecretKey: pair.privateKey,
    docIdKey: s.crypto_kdf_derive_from_key(32, 2, KdfContext.docIds, rootKey),
  };
};

export const generateDeviceKeys = (): DeviceKeys => {
  const pair = getSodium().crypto_sign_keypair();
  return { deviceId: deviceIdFromKey(pair.publicKey), publicKey: pair.publicKey, secretKey: pair.privateKey };
};

/**
 * Opaque document id: a keyed hash of class and name, so the relay learns neither, and two
 * users' documents of the same name never share an id.
 */
export const deriveDocId = (docIdKey: Uint8Array, docClass: string, name: string): DocId =>
  `doc_${toB64(getSodium().crypto_generichash(32, encodeFields([Domain.docId, docClass, name]), docIdKey))}` as DocId;

/** Epoch 0's secret comes from the root key; later epochs (after a revocation) are random. */
export const deriveEpochZeroSecret = (rootKey: Uint8Array): Uint8Array =>
  getSodium().crypto_kdf_derive_from_key(32, 3, KdfContext.epochZero, rootKey);

/** The XChaCha20-Poly1305 key of one document in one key epoch. */
export const deriveDocKey = (epochSecret: Uint8Array, docId: DocId, epoch: number): Uint8Array =>
  getSodium().crypto_generichash(32, encodeFields([Domain.docKey, docId, epoch]), epochSecret);
