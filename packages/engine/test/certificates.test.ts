import { beforeAll, describe, expect, it } from 'vitest';
import {
  certifyDevice,
  certifyFirstDevice,
  checkCertificateIds,
  cryptoReady,
  deriveUserKeys,
  generateDeviceKeys,
  generateRootKey,
  signChallenge,
  verifyCertificateChain,
  verifyChallenge,
  createChallengeNonce,
} from '@keel/engine';

beforeAll(async () => {
  await cryptoReady();
});

describe('device certificates', () => {
  it('establishes the first device and devices it certifies, transitively', () => {
    const user = deriveUserKeys(generateRootKey());
    const [a, b, c] = [generateDeviceKeys(), generateDeviceKeys(), generateDeviceKeys()];
    const certs = [certifyDevice(user, b, c.publicKey, 3), certifyDevice(user, a, b.publicKey, 2), certifyFirstDevice(user, a, 1)];
    const devices = verifyCertificateChain(certs, user.userId);
    expect([...devices.keys()].sort()).toEqual([a.deviceId, b.deviceId, c.deviceId].sort());
  });

  it('leaves out forged, orphaned and foreign certificates', () => {
    const user = deriveUserKeys(generateRootKey());
    const other = deriveUserKeys(generateRootKey());
    const a = generateDeviceKeys();
    const mallory = generateDeviceKeys();
    const orphanIssuer = generateDeviceKeys();
    const forged = { ...certifyFirstDevice(other, mallory, 1), user: user.userId };
    const orphan = certifyDevice(user, orphanIssuer, mallory.publicKey, 2);
    const foreign = certifyFirstDevice(other, mallory, 1);
    const devices = verifyCertificateChain([certifyFirstDevice(user, a, 1), forged, orphan, foreign], user.userId);
    expect([...devices.keys()]).toEqual([a.deviceId]);
    expect(checkCertificateIds(forged).ok).toBe(false);
  });

  it('binds challenge answers to relay, nonce, user and device', () => {
    const user = deriveUserKeys(generateRootKey());
    const a = generateDeviceKeys();
    const nonce = createChallengeNonce();
    const sig = signChallenge('relay-1', nonce, user.userId, a.deviceId, a.secretKey);
    expect(verifyChallenge('relay-1', nonce, user.userId, a.deviceId, sig, a.publicKey)).toBe(true);
    expect(verifyChallenge('relay-2', nonce, user.userId, a.deviceId, sig, a.publicKey)).toBe(false);
    expect(verifyChallenge('relay-1', createChallengeNonce(), user.userId, a.deviceId, sig, a.publicKey)).toBe(false);
    expect(verifyChallenge('relay-1', nonce, user.userId, a.deviceId, sig, generateDeviceKeys().publicKey)).toBe(false);
  });
});
