import { fromB64 } from '../protocol/bytes.js';
import { getSodium } from './sodium.js';

/**
 * Checks a detached Ed25519 signature (base64url) over the bytes `message` builds. Anything
 * malformed — the signature, the key, a field the message cannot encode — is a signature that
 * does not verify, never an exception: every verify of the engine goes through here.
 */
export const verifyDetached = (signature: string, message: () => Uint8Array, publicKey: Uint8Array): boolean => {
  try {
    return getSodium().crypto_sign_verify_detached(fromB64(signature), message(), publicKey);
  } catch {
    return false;
  }
};
