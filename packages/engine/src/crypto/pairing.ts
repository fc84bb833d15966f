import { encodeFields, fromB64, toB64 } from '../protocol/bytes.js';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import { Domain } from './domains.js';
import { getSodium } from './sodium.js';

/** The relay's lookup id of a pairing session; it learns nothing else about the code. */
export const PAIRING_ID_BYTES = 12;
/** Never leaves the two devices: it authenticates the join and the grant end to end. */
export const PAIRING_SECRET_BYTES = 16;
const CODE_PREFIX = 'keel-';

export interface PairingSecret {
  /** base64url, 16 characters. */
  readonly id: string;
  readonly secret: Uint8Array;
  /** What the user moves to the new device (typed, pasted or scanned). */
  readonly code: string;
}

/** A fresh single-use pairing code for linking a new device. */
export const createPairingCode = (): PairingSecret => {
  const s = getSodium();
  const id = s.randombytes_buf(PAIRING_ID_BYTES);
  const secret = s.randombytes_buf(PAIRING_SECRET_BYTES);
  const both = new Uint8Array(PAIRING_ID_BYTES + PAIRING_SECRET_BYTES);
  both.set(id);
  both.set(secret, PAIRING_ID_BYTES);
  return { id: toB64(id), secret, code: CODE_PREFIX + toB64(both) };
};

/** Reads a pairing code typed or pasted by a person: surrounding spaces and case of the prefix tolerated. */
export const parsePairingCode = (code: string): Result<{ id: string; secret: Uint8Array }> => {
  const trimmed = code.trim();
  if (!trimmed.toLowerCase().startsWith(CODE_PREFIX)) return err(ErrorCode.SCHEMA, 'a pairing code starts with "keel-"');
  const body = trimmed.slice(CODE_PREFIX.length);
  if (!/^[A-Za-z0-9_-]{38}$/.test(body)) return err(ErrorCode.SCHEMA, 'pairing code is malformed');
  const bytes = fromB64(body);
  if (bytes.length !== PAIRING_ID_BYTES + PAIRING_SECRET_BYTES) return err(ErrorCode.SCHEMA, 'pairing code is malformed');
  return ok({ id: toB64(bytes.subarray(0, PAIRING_ID_BYTES)), secret: bytes.slice(PAIRING_ID_BYTES) });
};

const mac = (label: string, secret: Uint8Array, fields: (string | Uint8Array)[]): Uint8Array =>
  getSodium().crypto_generichash(32, encodeFields([label, ...fields]), secret);

/** The new device proves it holds the code without revealing it to the relay. */
export const pairingProof = (secret: Uint8Array, id: string, devicePublicKey: Uint8Array): string =>
  toB64(mac(Domain.pairingJoin, secret, [id, devicePublicKey]));

export const verifyPairingProof = (secret: Uint8Array, id: string, devicePublicKey: Uint8Array, proof: string): boolean => {
  try {
    return getSodium().memcmp(fromB64(proof), mac(Domain.pairingJoin, secret, [id, devicePublicKey]));
  } catch {
    return false;
  }
};

/**
 * Seals what the existing device hands over (root key, certificate…) to the new device's key,
 * and authenticates the sealed box with the pairing secret, so the relay can neither read it
 * nor substitute a grant of its own making.
 */
export const sealToDevice = (
  payload: Uint8Array,
  recipientSignPublicKey: Uint8Array,
  secret: Uint8Array,
  id: string,
): { sealed: string; mac: string } => {
  const s = getSodium();
  const sealed = s.crypto_box_seal(payload, s.crypto_sign_ed25519_pk_to_curve25519(recipientSignPublicKey));
  return { sealed: toB64(sealed), mac: toB64(mac(Domain.pairingGrant, secret, [id, sealed])) };
};

export const openFromDevice = (
  sealed: string,
  grantMac: string,
  recipient: { publicKey: Uint8Array; secretKey: Uint8Array },
  secret: Uint8Array,
  id: string,
): Result<Uint8Array> => {
  const s = getSodium();
  try {
    const box = fromB64(sealed);
    if (!s.memcmp(fromB64(grantMac), mac(Domain.pairingGrant, secret, [id, box]))) {
      return err(ErrorCode.BAD_SIGNATURE, 'pairing grant was not made by the device that showed the code');
    }
    const pk = s.crypto_sign_ed25519_pk_to_curve25519(recipient.publicKey);
    const sk = s.crypto_sign_ed25519_sk_to_curve25519(recipient.secretKey);
    return ok(s.crypto_box_seal_open(box, pk, sk));
  } catch {
    return err(ErrorCode.DECRYPT_FAILED, 'pairing grant does not open with this device key');
  }
};
