import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  type DocId,
  type Envelope,
  type EnvelopeHeader,
  ErrorCode,
  cryptoReady,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  deriveUserKeys,
  fromB64,
  generateDeviceKeys,
  generateRootKey,
  openEnvelope,
  sealEnvelope,
  toB64,
  verifyEnvelopeSignature,
  WireLimits,
} from '@keel/engine';

beforeAll(async () => {
  await cryptoReady();
});

const setup = () => {
  const user = deriveUserKeys(generateRootKey());
  const device = generateDeviceKeys();
  const doc = deriveDocId(user.docIdKey, 'safety_plan', 'main');
  const key = deriveDocKey(deriveEpochZeroSecret(user.rootKey), doc, 0);
  const header: EnvelopeHeader = { doc, kind: 'update', epoch: 0, device: device.deviceId, counter: 1, lane: 10 };
  return { user, device, doc, key, header };
};

const flipBit = (b64: string, bit: number): string => {
  const bytes = fromB64(b64);
  bytes[(bit >> 3) % bytes.length]! ^= 1 << (bit & 7);
  return toB64(bytes);
};

describe('envelope', () => {
  it('round-trips any payload, padded or not (property)', () => {
    const { device, key, header } = setup();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 4096 }), fc.boolean(), (payload, pad) => {
        const env = sealEnvelope(header, payload, { key, signingKey: device.secretKey, pad });
        const opened = openEnvelope(env, { key, authorPublicKey: device.publicKey });
        expect(opened.ok && toB64(opened.value)).toBe(toB64(payload));
      }),
      { seed: 7, numRuns: 200 },
    );
  });

  it('deflates before sealing when asked and when it helps, and opens to the same bytes (property)', () => {
    const { device, key, header } = setup();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 4096 }), fc.nat(3000), fc.boolean(), (random, repeat, pad) => {
        const payload = new Uint8Array([...random, ...new Uint8Array(repeat).fill(7)]);
        const env = sealEnvelope(header, payload, { key, signingKey: device.secretKey, compress: true, pad });
        const opened = openEnvelope(env, { key, authorPublicKey: device.publicKey });
        expect(opened.ok && toB64(opened.value)).toBe(toB64(payload));
      }),
      { seed: 5, numRuns: 150 },
    );
    const text = new TextEncoder().encode('I will call my sister. '.repeat(1000));
    const plain = sealEnvelope(header, text, { key, signingKey: device.secretKey });
    const small = sealEnvelope(header, text, { key, signingKey: device.secretKey, compress: true });
    expect(fromB64(small.ct).length * 10).toBeLessThan(fromB64(plain.ct).length);
  });

  it('refuses a deflated payload that would inflate past the limit (default: the largest inbound frame; or as asked)', () => {
    const { device, key, header } = setup();
    // 65 MiB of zeros deflates to about 64 KiB: an author bug (or a compromised device) must not exhaust memory.
    const bomb = sealEnvelope(header, new Uint8Array(65 * 1024 * 1024), { key, signingKey: device.secretKey, compress: true });
    expect(fromB64(bomb.ct).length).toBeLessThan(1024 * 1024);
    const opened = openEnvelope(bomb, { key, authorPublicKey: device.publicKey });
    expect(opened.ok || opened.error.code).toBe(ErrorCode.LIMIT_EXCEEDED);
    // Just over the default is refused; at a lower limit the caller asks for, so is a smaller one.
    const over = sealEnvelope(header, new Uint8Array(WireLimits.maxInboundFrameBytes + 1), { key, signingKey: device.secretKey, compress: true });
    expect(openEnvelope(over, { key, authorPublicKey: device.publicKey }).ok).toBe(false);
    const small = sealEnvelope(header, new Uint8Array(64 * 1024), { key, signingKey: device.secretKey, compress: true });
    expect(openEnvelope(small, { key, authorPublicKey: device.publicKey }).ok).toBe(true);
    const limited = openEnvelope(small, { key, authorPublicKey: device.publicKey, maxInflatedBytes: 32 * 1024 });
    expect(limited.ok || limited.error.code).toBe(ErrorCode.LIMIT_EXCEEDED);
  });

  it('pads to power-of-two buckets so sizes leak less', () => {
    const { device, key, header } = setup();
    const sizes = [1, 100, 200, 250].map((n) => fromB64(sealEnvelope(header, new Uint8Array(n), { key, signingKey: device.secretKey, pad: true }).ct).length);
    expect(new Set(sizes).size).toBe(1);
  });

  it('uses a fresh nonce for every seal of the same payload', () => {
    const { device, key, header } = setup();
    const a = sealEnvelope(header, new Uint8Array([1, 2, 3]), { key, signingKey: device.secretKey });
    const b = sealEnvelope(header, new Uint8Array([1, 2, 3]), { key, signingKey: device.secretKey });
    expect(a.nonce).not.toBe(b.nonce);
    expect(a.ct).not.toBe(b.ct);
  });

  it('rejects any flipped bit of ciphertext, nonce or signature (property)', () => {
    const { device, key, header } = setup();
    const env = sealEnvelope(header, new TextEncoder().encode('call my sister'), { key, signingKey: device.secretKey });
    fc.assert(
      fc.property(fc.constantFrom<'ct' | 'nonce' | 'sig'>('ct', 'nonce', 'sig'), fc.nat(), (field, bit) => {
        const tampered: Envelope = { ...env, [field]: flipBit(env[field], bit) };
        const opened = openEnvelope(tampered, { key, authorPublicKey: device.publicKey });
        expect(opened.ok).toBe(false);
        expect(verifyEnvelopeSignature(tampered, device.publicKey)).toBe(false);
      }),
      { seed: 11, numRuns: 300 },
    );
  });

  it('rejects a changed header field even when re-signed by the author (AEAD binds it)', () => {
    const { user, device, key, header } = setup();
    const env = sealEnvelope(header, new Uint8Array([9, 9, 9]), { key, signingKey: device.secretKey });
    const otherDoc: DocId = deriveDocId(user.docIdKey, 'safety_plan', 'other');
    for (const change of [{ doc: otherDoc }, { counter: 2 }, { lane: 3 }, { epoch: 1 }, { kind: 'snapshot' as const }]) {
      const moved = { ...env, ...change };
      expect(verifyEnvelopeSignature(moved, device.publicKey)).toBe(false);
      // Even a signature over the moved header does not help: the associated data no longer matches.
      const resealedHeader = { ...header, ...change };
      const forged = sealEnvelope(resealedHeader, new Uint8Array(0), { key, signingKey: device.secretKey });
      const spliced = { ...forged, nonce: env.nonce, ct: env.ct };
      const opened = openEnvelope(spliced, { key, authorPublicKey: device.publicKey });
      expect(opened.ok).toBe(false);
    }
  });

  it('refuses a signature by another device and a wrong key with typed errors', () => {
    const { device, key, header } = setup();
    const stranger = generateDeviceKeys();
    const env = sealEnvelope(header, new Uint8Array([1]), { key, signingKey: device.secretKey });
    const wrongAuthor = openEnvelope(env, { key, authorPublicKey: stranger.publicKey });
    expect(wrongAuthor.ok || wrongAuthor.error.code).toBe(ErrorCode.BAD_SIGNATURE);
    const wrongKey = openEnvelope(env, { key: new Uint8Array(32), authorPublicKey: device.publicKey });
    expect(wrongKey.ok || wrongKey.error.code).toBe(ErrorCode.DECRYPT_FAILED);
  });
});

describe('keys', () => {
  it('derives stable, user-scoped, opaque document ids', () => {
    const a = deriveUserKeys(generateRootKey());
    const b = deriveUserKeys(generateRootKey());
    expect(deriveDocId(a.docIdKey, 'safety_plan', 'main')).toBe(deriveDocId(deriveUserKeys(a.rootKey).docIdKey, 'safety_plan', 'main'));
    expect(deriveDocId(a.docIdKey, 'safety_plan', 'main')).not.toBe(deriveDocId(b.docIdKey, 'safety_plan', 'main'));
    expect(deriveDocId(a.docIdKey, 'safety_plan', 'main')).not.toBe(deriveDocId(a.docIdKey, 'safety_plan', 'main2'));
    expect(deriveDocId(a.docIdKey, 'safety_plan', 'main')).not.toContain('safety');
    expect(a.userId).toBe(deriveUserKeys(a.rootKey).userId);
  });

  it('gives each document and epoch its own key', () => {
    const u = deriveUserKeys(generateRootKey());
    const secret = deriveEpochZeroSecret(u.rootKey);
    const d1 = deriveDocId(u.docIdKey, 'mood', 'a');
    const d2 = deriveDocId(u.docIdKey, 'mood', 'b');
    const keys = [deriveDocKey(secret, d1, 0), deriveDocKey(secret, d2, 0), deriveDocKey(secret, d1, 1)].map(toB64);
    expect(new Set(keys).size).toBe(3);
  });
});
