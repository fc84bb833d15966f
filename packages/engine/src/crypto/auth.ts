import { encodeFields, fromB64, toB64 } from '../protocol/bytes.js';
import type { DeviceId, UserId } from '../protocol/ids.js';
import { Domain } from './domains.js';
import { getSodium } from './sodium.js';
import { verifyDetached } from './signature.js';

export const CHALLENGE_BYTES = 32;

const challengeBytes = (relay: string, nonce: string, user: UserId, device: DeviceId): Uint8Array =>
  encodeFields([Domain.authChallenge, relay, fromB64(nonce), user, device]);

export const createChallengeNonce = (): string => toB64(getSodium().randombytes_buf(CHALLENGE_BYTES));

/** The device's answer to a relay's challenge; bound to the relay's name, so it cannot be replayed elsewhere. */
export const signChallenge = (relay: string, nonce: string, user: UserId, device: DeviceId, secretKey: Uint8Array): string =>
  toB64(getSodium().crypto_sign_detached(challengeBytes(relay, nonce, user, device), secretKey));

export const verifyChallenge = (
  relay: string,
  nonce: string,
  user: UserId,
  device: DeviceId,
  signature: string,
  publicKey: Uint8Array,
): boolean =>
  verifyDetached(signature, () => challengeBytes(relay, nonce, user, device), publicKey);
