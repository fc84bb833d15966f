import { type KeyObject, createPublicKey, verify } from 'node:crypto';
import { type Envelope, envelopeSignedBytes, fromB64 } from '@keel/engine';

/** DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** A device's Ed25519 key, ready for repeated checks with Node's native implementation. */
export interface DeviceVerifier {
  /** True when the device signed this envelope exactly as it is. */
  envelope(env: Envelope): boolean;
}

/**
 * The relay verifies every stored envelope, so it uses OpenSSL's Ed25519 (via node:crypto)
 * rather than libsodium's WebAssembly build: the same answer, but large envelopes hash about
 * three times faster, which is CPU the event loop gets back. The key object is built once per
 * connection.
 */
export const createDeviceVerifier = (publicKey: Uint8Array): DeviceVerifier => {
  const key: KeyObject = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' });
  return {
    envelope(env) {
      try {
        return verify(null, envelopeSignedBytes(env), key, fromB64(env.sig));
      } catch {
        return false;
      }
    },
  };
};
