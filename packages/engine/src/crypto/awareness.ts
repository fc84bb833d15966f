import { encodeFields, fromB64, toB64 } from '../protocol/bytes.js';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import { type AwarenessEnvelope, WireLimits } from '../protocol/frames.js';
import type { DeviceId, DocId } from '../protocol/ids.js';
import { Domain } from './domains.js';
import { padBucket } from './envelope.js';
import { getSodium } from './sodium.js';
import { verifyDetached } from './signature.js';

/**
 * Awareness (cursors, "who is here") sealed like an update — the document's key of the epoch,
 * XChaCha20-Poly1305, the author's Ed25519 signature, padding to a power-of-two bucket — but with
 * no counter and no log entry: it is ephemeral. Its own domain labels keep it from ever passing
 * as an update envelope (or an envelope as awareness), and `at` lets a receiver drop old ones.
 */
export interface AwarenessHeader {
  readonly doc: DocId;
  readonly epoch: number;
  readonly device: DeviceId;
  /** The author's clock when it sealed this (ms since epoch). */
  readonly at: number;
}

const headerFields = (h: AwarenessHeader) => [h.doc, h.epoch, h.device, h.at];

const associatedData = (h: AwarenessHeader): Uint8Array => encodeFields([Domain.awarenessAead, ...headerFields(h)]);

const signedBytes = (h: AwarenessHeader, nonce: Uint8Array, ct: Uint8Array): Uint8Array =>
  encodeFields([Domain.awarenessSignature, ...headerFields(h), nonce, ct]);

/** Encrypts, pads and signs one awareness update. A fresh random nonce every call. */
export const sealAwareness = (header: AwarenessHeader, update: Uint8Array, options: { key: Uint8Array; signingKey: Uint8Array }): AwarenessEnvelope => {
  const s = getSodium();
  const body = s.pad(update, padBucket(update.length + 1));
  const nonce = s.randombytes_buf(s.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
  const ct = s.crypto_aead_xchacha20poly1305_ietf_encrypt(body, associatedData(header), null, nonce, options.key);
  const sig = s.crypto_sign_detached(signedBytes(header, nonce, ct), options.signingKey);
  return { doc: header.doc, epoch: header.epoch, device: header.device, at: header.at, nonce: toB64(nonce), ct: toB64(ct), sig: toB64(sig) };
};

/** True when `publicKey` signed this awareness envelope exactly as it is. */
export const verifyAwarenessSignature = (aw: AwarenessEnvelope, publicKey: Uint8Array): boolean =>
  verifyDetached(aw.sig, () => signedBytes(aw, fromB64(aw.nonce), fromB64(aw.ct)), publicKey);

/**
 * Verifies the author's signature, then decrypts with the document key of the envelope's epoch;
 * returns the awareness update. Any change to header, nonce or ciphertext fails here.
 */
export const openAwareness = (aw: AwarenessEnvelope, options: { key: Uint8Array; authorPublicKey: Uint8Array }): Result<Uint8Array> => {
  if (!verifyAwarenessSignature(aw, options.authorPublicKey)) return err(ErrorCode.BAD_SIGNATURE, `awareness of ${aw.device} is not signed by it`);
  const s = getSodium();
  let body: Uint8Array;
  try {
    body = s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, fromB64(aw.ct), associatedData(aw), fromB64(aw.nonce), options.key);
  } catch {
    return err(ErrorCode.DECRYPT_FAILED, `awareness of ${aw.device} does not decrypt under this document's key`);
  }
  try {
    return ok(s.unpad(body, body.length));
  } catch {
    return err(ErrorCode.BAD_PAYLOAD, 'awareness padding is malformed');
  }
};

/**
 * Whether an awareness envelope sealed at `at` is too old (or too far in the future: clocks of a
 * user's devices differ by seconds, not by the timeout) to apply at `now`.
 */
export const isAwarenessStale = (at: number, now: number): boolean => Math.abs(now - at) > WireLimits.awarenessMaxAgeMs;
