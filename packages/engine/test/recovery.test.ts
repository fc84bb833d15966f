import {
  type DeviceCertificate,
  DeviceCertificateSchema,
  ErrorCode,
  EpochRecordSchema,
  RecoveryResetSchema,
  certifyByRecovery,
  certifyDevice,
  certifyFirstDevice,
  checkCertificateIds,
  createEpochRecord,
  createRecoverySecret,
  cryptoReady,
  deriveRecoveryKeys,
  deriveUserKeys,
  fromB64,
  generateDeviceKeys,
  generateEpochSecret,
  generateRootKey,
  openEpochRecord,
  openEpochRecoveryWrap,
  openRootKeyEscrow,
  parseClientFrame,
  parseRecoveryPhrase,
  sealRootKeyEscrow,
  signRecoveryReset,
  toB64,
  verifyCertificateChain,
  verifyCertificateSignature,
  verifyEpochRecord,
  verifyRecoveryReset,
} from '@keel/engine';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';

beforeAll(async () => {
  await cryptoReady();
});

const codeOf = (result: { ok: boolean; error?: { code: string } }): string => (result.ok ? 'ok' : result.error!.code);

describe('recovery phrase', () => {
  it('shows 16 random bytes as 12 BIP39 words and as a keel-recovery: code, and reads both back', () => {
    const secret = createRecoverySecret();
    expect(secret.entropy).toHaveLength(16);
    expect(secret.phrase.split(' ')).toHaveLength(12);
    expect(secret.code).toMatch(/^keel-recovery:[A-Za-z0-9_-]{22}$/);
    for (const input of [secret.phrase, secret.code]) {
      const parsed = parseRecoveryPhrase(input);
      if (!parsed.ok) throw new Error(parsed.error.message);
      expect(parsed.value.entropy).toEqual(secret.entropy);
      expect(parsed.value.phrase).toBe(secret.phrase);
      expect(parsed.value.code).toBe(secret.code);
    }
    expect(createRecoverySecret().entropy).not.toEqual(secret.entropy);
  });

  it('matches the BIP39 reference vector', () => {
    const parsed = parseRecoveryPhrase('legal winner thank year wave sausage worth useful legal winner thank yellow');
    if (!parsed.ok) throw new Error(parsed.error.message);
    expect(parsed.value.entropy).toEqual(new Uint8Array(16).fill(0x7f));
  });

  it('forgives case and whitespace as a person types them', () => {
    const secret = createRecoverySecret();
    const sloppy = `  ${secret.phrase.toUpperCase().split(' ').join(' \n\t ')}  `;
    expect(parseRecoveryPhrase(sloppy)).toMatchObject({ ok: true, value: { entropy: secret.entropy } });
    const code = `  KEEL-RECOVERY:${secret.code.slice('keel-recovery:'.length)} `;
    expect(parseRecoveryPhrase(code)).toMatchObject({ ok: true, value: { entropy: secret.entropy } });
  });

  it('refuses wrong words, a failed checksum, a wrong count and malformed codes (RECOVERY_PHRASE_INVALID)', () => {
    const words = createRecoverySecret().phrase.split(' ');
    const swapped = [...words];
    // Find a swap the 4-bit checksum catches (1 in 16 swaps still checks out).
    let caught = false;
    for (let i = 0; i < 11 && !caught; i++) {
      if (words[i] === words[i + 1]) continue;
      const candidate = [...words];
      [candidate[i], candidate[i + 1]] = [candidate[i + 1]!, candidate[i]!];
      if (!parseRecoveryPhrase(candidate.join(' ')).ok) {
        swapped.splice(0, 12, ...candidate);
        caught = true;
      }
    }
    expect(caught).toBe(true);
    const bad = [
      swapped.join(' '),
      [...words.slice(0, 11), 'notaword'].join(' '),
      words.slice(0, 11).join(' '),
      [...words, words[0]].join(' '),
      '',
      'keel-recovery:',
      'keel-recovery:AAAA',
      // 22 characters whose last one carries non-zero padding bits: not a canonical encoding.
      `keel-recovery:${'A'.repeat(21)}B`,
      'x'.repeat(5000),
    ];
    for (const input of bad) expect(codeOf(parseRecoveryPhrase(input)), input.slice(0, 40)).toBe(ErrorCode.RECOVERY_PHRASE_INVALID);
  });

  it('derives the same recovery key from the words every time, a different one from other words', () => {
    const secret = createRecoverySecret();
    const again = parseRecoveryPhrase(secret.phrase);
    if (!again.ok) throw new Error(again.error.message);
    expect(deriveRecoveryKeys(again.value.entropy)).toEqual(deriveRecoveryKeys(secret.entropy));
    expect(deriveRecoveryKeys(createRecoverySecret().entropy).publicKey).not.toEqual(deriveRecoveryKeys(secret.entropy).publicKey);
  });

  it('round-trips any 16 bytes through words and code (property, seeded)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (entropy) => {
        const code = `keel-recovery:${toB64(entropy)}`;
        const viaCode = parseRecoveryPhrase(code);
        if (!viaCode.ok) return false;
        const viaWords = parseRecoveryPhrase(viaCode.value.phrase);
        return viaWords.ok && toB64(viaWords.value.entropy) === toB64(entropy);
      }),
      { seed: 5, numRuns: 200 },
    );
  });
});

describe('root-key escrow and epoch recovery wraps', () => {
  it('opens the root key with the recovery key, bound to the user', () => {
    const user = deriveUserKeys(generateRootKey());
    const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
    const escrow = sealRootKeyEscrow(user.userId, user.rootKey, recovery.publicKey);
    const opened = openRootKeyEscrow(escrow, user.userId, recovery);
    expect(opened.ok && opened.value).toEqual(user.rootKey);

    const other = deriveUserKeys(generateRootKey());
    expect(codeOf(openRootKeyEscrow(escrow, other.userId, recovery))).toBe(ErrorCode.DECRYPT_FAILED);
    expect(codeOf(openRootKeyEscrow(escrow, user.userId, deriveRecoveryKeys(createRecoverySecret().entropy)))).toBe(ErrorCode.DECRYPT_FAILED);
    const bytes = fromB64(escrow);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 1;
    expect(codeOf(openRootKeyEscrow(toB64(bytes), user.userId, recovery))).toBe(ErrorCode.DECRYPT_FAILED);
    // An epoch wrap is not an escrow, even for the same user and recovery key.
    const record = createEpochRecord(user.userId, 1, generateDeviceKeys(), user.rootKey, new Map(), 1, recovery.publicKey);
    expect(codeOf(openRootKeyEscrow(record.recovery!, user.userId, recovery))).toBe(ErrorCode.DECRYPT_FAILED);
  });

  it('seals an epoch secret to the recovery key inside the signed record', () => {
    const user = deriveUserKeys(generateRootKey());
    const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
    const [issuer, peer] = [generateDeviceKeys(), generateDeviceKeys()];
    const secret = generateEpochSecret();
    const record = createEpochRecord(user.userId, 3, issuer, secret, new Map([[peer.deviceId, peer.publicKey]]), 10, recovery.publicKey);
    expect(EpochRecordSchema.parse(record)).toEqual(record);
    expect(verifyEpochRecord(record, issuer.publicKey)).toBe(true);
    const viaRecovery = openEpochRecoveryWrap(record.recovery!, user.userId, 3, recovery);
    expect(viaRecovery.ok && viaRecovery.value).toEqual(secret);
    expect(openEpochRecord(record, peer)).toEqual({ ok: true, value: secret });

    // Bound to its epoch and user, and covered by the issuer's signature.
    expect(codeOf(openEpochRecoveryWrap(record.recovery!, user.userId, 4, recovery))).toBe(ErrorCode.DECRYPT_FAILED);
    const { recovery: _dropped, ...stripped } = record;
    expect(verifyEpochRecord(stripped, issuer.publicKey)).toBe(false);
    const foreign = createEpochRecord(user.userId, 3, issuer, generateEpochSecret(), new Map([[peer.deviceId, peer.publicKey]]), 10, recovery.publicKey);
    expect(verifyEpochRecord({ ...record, recovery: foreign.recovery! }, issuer.publicKey)).toBe(false);
  });

  it('still verifies epoch records made without a recovery wrap', () => {
    const user = deriveUserKeys(generateRootKey());
    const [issuer, peer] = [generateDeviceKeys(), generateDeviceKeys()];
    const record = createEpochRecord(user.userId, 1, issuer, generateEpochSecret(), new Map([[peer.deviceId, peer.publicKey]]), 10);
    expect(record.recovery).toBeUndefined();
    expect(verifyEpochRecord(record, issuer.publicKey)).toBe(true);
  });
});

describe('recovery reset statements', () => {
  const setup = () => {
    const user = deriveUserKeys(generateRootKey());
    const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
    const keep = [generateDeviceKeys().deviceId, generateDeviceKeys().deviceId];
    return { user, recovery, keep, reset: signRecoveryReset(user.userId, keep, 1, recovery, 1_000) };
  };

  it('verifies with the recovery key and nothing else', () => {
    const { user, recovery, reset } = setup();
    expect(RecoveryResetSchema.parse(reset)).toEqual(reset);
    expect(verifyRecoveryReset(reset, recovery.publicKey)).toBe(true);
    expect(verifyRecoveryReset(reset, deriveRecoveryKeys(createRecoverySecret().entropy).publicKey)).toBe(false);
    expect(verifyRecoveryReset(reset, user.userPublicKey)).toBe(false);
  });

  it('refuses a tampered statement: another generation, device list, user or time', () => {
    const { recovery, reset } = setup();
    const intruder = generateDeviceKeys().deviceId;
    const other = deriveUserKeys(generateRootKey()).userId;
    for (const tampered of [
      { ...reset, gen: 2 },
      { ...reset, keep: [intruder] },
      { ...reset, keep: [...reset.keep, intruder] },
      { ...reset, keep: [...reset.keep].reverse() },
      { ...reset, user: other },
      { ...reset, at: reset.at + 1 },
    ]) {
      expect(verifyRecoveryReset(tampered, recovery.publicKey)).toBe(false);
    }
  });

  it('refuses a forged statement signed by the user key or a device key (a thief holds both)', () => {
    const { user, keep } = setup();
    const device = generateDeviceKeys();
    const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
    const byUserKey = signRecoveryReset(user.userId, keep, 1, { publicKey: user.userPublicKey, secretKey: user.userSecretKey }, 1);
    const byDevice = signRecoveryReset(user.userId, keep, 1, device, 1);
    expect(verifyRecoveryReset(byUserKey, recovery.publicKey)).toBe(false);
    expect(verifyRecoveryReset(byDevice, recovery.publicKey)).toBe(false);
  });

  it('keeps 1 to 32 distinct devices (schema)', () => {
    const { reset } = setup();
    const many = Array.from({ length: 33 }, () => generateDeviceKeys().deviceId);
    expect(RecoveryResetSchema.safeParse({ ...reset, keep: [] }).success).toBe(false);
    expect(RecoveryResetSchema.safeParse({ ...reset, keep: many }).success).toBe(false);
    expect(RecoveryResetSchema.safeParse({ ...reset, keep: many.slice(0, 32) }).success).toBe(true);
    expect(RecoveryResetSchema.safeParse({ ...reset, keep: [reset.keep[0], reset.keep[0]] }).success).toBe(false);
    expect(RecoveryResetSchema.safeParse({ ...reset, gen: 0 }).success).toBe(false);
  });
});

describe('certificates and the recovery key', () => {
  it('binds the recovery key into the first device certificate', () => {
    const user = deriveUserKeys(generateRootKey());
    const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
    const device = generateDeviceKeys();
    const cert = certifyFirstDevice(user, device, 1, recovery.publicKey);
    expect(cert.recoveryKey).toBe(toB64(recovery.publicKey));
    expect(DeviceCertificateSchema.parse(cert)).toEqual(cert);
    expect(verifyCertificateSignature(cert, user.userPublicKey)).toBe(true);
    const { recoveryKey: _dropped, ...stripped } = cert;
    expect(verifyCertificateSignature(stripped, user.userPublicKey)).toBe(false);
    const swapped = { ...cert, recoveryKey: toB64(deriveRecoveryKeys(createRecoverySecret().entropy).publicKey) };
    expect(verifyCertificateSignature(swapped, user.userPublicKey)).toBe(false);
  });

  it('still verifies first-device certificates made without a recovery key', () => {
    const user = deriveUserKeys(generateRootKey());
    const device = generateDeviceKeys();
    const old: DeviceCertificate = certifyFirstDevice(user, device, 1);
    expect('recoveryKey' in old).toBe(false);
    expect(verifyCertificateSignature(old, user.userPublicKey)).toBe(true);
    expect([...verifyCertificateChain([old], user.userId).keys()]).toEqual([device.deviceId]);
  });

  it('establishes recovery-issued devices only with the recovery key this device was given', () => {
    const user = deriveUserKeys(generateRootKey());
    const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
    const [first, recovered, linked] = [generateDeviceKeys(), generateDeviceKeys(), generateDeviceKeys()];
    const certs = [
      certifyFirstDevice(user, first, 1, recovery.publicKey),
      certifyByRecovery(user, recovery, recovered.publicKey, 2),
      certifyDevice(user, recovered, linked.publicKey, 3),
    ];
    expect(certs[1]!.issuer).toBe('recovery');
    expect(checkCertificateIds(certs[1]!).ok).toBe(true);
    expect([...verifyCertificateChain(certs, user.userId, recovery.publicKey).keys()].sort()).toEqual(
      [first.deviceId, recovered.deviceId, linked.deviceId].sort(),
    );
    // Without the recovery key, or with another one, the recovered device and its children do not count.
    expect([...verifyCertificateChain(certs, user.userId).keys()]).toEqual([first.deviceId]);
    const wrong = deriveRecoveryKeys(createRecoverySecret().entropy).publicKey;
    expect([...verifyCertificateChain(certs, user.userId, wrong).keys()]).toEqual([first.deviceId]);
    // A thief's "recovery" certificate signed with the user key does not pass for one.
    const forged = { ...certifyByRecovery(user, { publicKey: user.userPublicKey, secretKey: user.userSecretKey }, linked.publicKey, 4) };
    expect(verifyCertificateSignature(forged, recovery.publicKey)).toBe(false);
  });

  it('refuses a recovery key on a certificate that is not a first device’s', () => {
    const user = deriveUserKeys(generateRootKey());
    const [a, b] = [generateDeviceKeys(), generateDeviceKeys()];
    const cert = { ...certifyDevice(user, a, b.publicKey, 1), recoveryKey: toB64(user.userPublicKey) };
    expect(codeOf(checkCertificateIds(cert))).toBe(ErrorCode.BAD_CERTIFICATE);
  });
});

describe('hello with a reset', () => {
  it('fits in the relay’s default 8 KiB pre-auth frame at its largest: a chain of 8, the escrow and a reset keeping 32 devices', () => {
    const user = deriveUserKeys(generateRootKey());
    const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
    const devices = Array.from({ length: 10 }, () => generateDeviceKeys());
    const chain = [certifyFirstDevice(user, devices[0]!, Number.MAX_SAFE_INTEGER, recovery.publicKey)];
    for (let i = 1; i < 9; i++) chain.push(certifyDevice(user, devices[i - 1]!, devices[i]!.publicKey, Number.MAX_SAFE_INTEGER));
    const cert = certifyDevice(user, devices[8]!, devices[9]!.publicKey, Number.MAX_SAFE_INTEGER);
    const keep = [devices[9]!.deviceId, ...Array.from({ length: 31 }, () => generateDeviceKeys().deviceId)];
    const hello = {
      type: 'hello',
      v: 1,
      user: user.userId,
      device: devices[9]!.deviceId,
      cert,
      chain: chain.slice(-8),
      escrow: 'A'.repeat(512),
      recovery: signRecoveryReset(user.userId, keep, 0x7fff_ffff, recovery, Number.MAX_SAFE_INTEGER),
    };
    const parsed = parseClientFrame(JSON.stringify(hello), 8 * 1024);
    expect(parsed.ok).toBe(true);
    expect(JSON.stringify(hello).length).toBeLessThan(8 * 1024);
  });
});
