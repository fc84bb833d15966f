import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type AwarenessEnvelope,
  AwarenessFrameSchema,
  ErrorCode,
  RelayFrameSchema,
  WireLimits,
  cryptoReady,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  deriveUserKeys,
  fromB64,
  generateDeviceKeys,
  generateRootKey,
  isAwarenessStale,
  openAwareness,
  openEnvelope,
  sealAwareness,
  sealEnvelope,
  toB64,
} from '@keel/engine';

beforeAll(async () => {
  await cryptoReady();
});

const setup = () => {
  const user = deriveUserKeys(generateRootKey());
  const device = generateDeviceKeys();
  const doc = deriveDocId(user.docIdKey, 'journal', 'main');
  const key = deriveDocKey(deriveEpochZeroSecret(user.rootKey), doc, 0);
  return { user, device, doc, key };
};

const flip = (b64: string): string => {
  const bytes = fromB64(b64);
  bytes[0]! ^= 1;
  return toB64(bytes);
};

describe('awareness sealing', () => {
  it('round-trips any update, padded to a power-of-two bucket, and validates as a wire frame both ways', () => {
    const { device, doc, key } = setup();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 3000 }), fc.nat({ max: 2 ** 40 }), (update, at) => {
        const aw = sealAwareness({ doc, epoch: 0, device: device.deviceId, at }, update, { key, signingKey: device.secretKey });
        const opened = openAwareness(aw, { key, authorPublicKey: device.publicKey });
        expect(opened.ok && Buffer.from(opened.value).equals(Buffer.from(update))).toBe(true);
        // Sizes leak only their bucket: ciphertext = bucket + 16-byte tag, bucket a power of two ≥ 256.
        const body = fromB64(aw.ct).length - 16;
        expect(body >= 256 && (body & (body - 1)) === 0).toBe(true);
        expect(AwarenessFrameSchema.safeParse({ type: 'awareness', aw }).success).toBe(true);
        expect(RelayFrameSchema.safeParse({ type: 'awareness', aw }).success).toBe(true);
      }),
      { numRuns: 50, seed: 7 },
    );
  });

  it('refuses any change to the bound header, nonce, ciphertext or signature', () => {
    const { device, doc, key, user } = setup();
    const aw = sealAwareness({ doc, epoch: 0, device: device.deviceId, at: 1_000 }, new Uint8Array([1, 2, 3]), { key, signingKey: device.secretKey });
    const other = deriveDocId(user.docIdKey, 'journal', 'other');
    const changed: AwarenessEnvelope[] = [
      { ...aw, doc: other },
      { ...aw, at: 1_001 },
      { ...aw, epoch: 1 },
      { ...aw, device: generateDeviceKeys().deviceId },
      { ...aw, nonce: flip(aw.nonce) },
      { ...aw, ct: flip(aw.ct) },
      { ...aw, sig: flip(aw.sig) },
    ];
    for (const bad of changed) {
      const opened = openAwareness(bad, { key, authorPublicKey: device.publicKey });
      expect(opened.ok ? 'opened' : opened.error.code).toBe(ErrorCode.BAD_SIGNATURE);
    }
    // Signed by its author but sealed under another key: the AEAD refuses it.
    const otherKey = deriveDocKey(deriveEpochZeroSecret(user.rootKey), other, 0);
    const wrongKey = sealAwareness({ doc, epoch: 0, device: device.deviceId, at: 1 }, new Uint8Array([1]), { key: otherKey, signingKey: device.secretKey });
    const opened = openAwareness(wrongKey, { key, authorPublicKey: device.publicKey });
    expect(opened.ok ? 'opened' : opened.error.code).toBe(ErrorCode.DECRYPT_FAILED);
  });

  it('never passes as an update envelope, nor an update envelope as awareness (domain separation)', () => {
    const { device, doc, key } = setup();
    const env = sealEnvelope({ doc, kind: 'update', epoch: 0, device: device.deviceId, counter: 1, lane: 5 }, new Uint8Array([9, 9]), {
      key,
      signingKey: device.secretKey,
      pad: true,
    });
    const asAwareness: AwarenessEnvelope = { doc, epoch: 0, device: device.deviceId, at: 1, nonce: env.nonce, ct: env.ct, sig: env.sig };
    const opened = openAwareness(asAwareness, { key, authorPublicKey: device.publicKey });
    expect(opened.ok ? 'opened' : opened.error.code).toBe(ErrorCode.BAD_SIGNATURE);
    const aw = sealAwareness({ doc, epoch: 0, device: device.deviceId, at: 1 }, new Uint8Array([9, 9]), { key, signingKey: device.secretKey });
    const asUpdate = { doc, kind: 'update' as const, epoch: 0, device: device.deviceId, counter: 1, lane: env.lane, nonce: aw.nonce, ct: aw.ct, sig: aw.sig };
    const openedUpdate = openEnvelope(asUpdate, { key, authorPublicKey: device.publicKey });
    expect(openedUpdate.ok ? 'opened' : openedUpdate.error.code).toBe(ErrorCode.BAD_SIGNATURE);
  });

  it('counts anything sealed more than 30 s away from now as stale, either way', () => {
    const now = 1_000_000;
    expect(isAwarenessStale(now - WireLimits.awarenessMaxAgeMs, now)).toBe(false);
    expect(isAwarenessStale(now - WireLimits.awarenessMaxAgeMs - 1, now)).toBe(true);
    expect(isAwarenessStale(now + WireLimits.awarenessMaxAgeMs + 1, now)).toBe(true);
  });

  it('refuses on the wire a ciphertext above the awareness size cap', () => {
    const { device, doc, key } = setup();
    const aw = sealAwareness({ doc, epoch: 0, device: device.deviceId, at: 1 }, new Uint8Array(WireLimits.maxAwarenessBytes), { key, signingKey: device.secretKey });
    expect(AwarenessFrameSchema.safeParse({ type: 'awareness', aw }).success).toBe(false);
  });
});
