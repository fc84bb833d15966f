import {
  type DeviceCertificate,
  type DeviceKeys,
  type RecoveryKeys,
  type Revocation,
  type UserKeys,
  certifyByRecovery,
  certifyDevice,
  certifyFirstDevice,
  createEpochRecord,
  createRecoverySecret,
  cryptoReady,
  deriveRecoveryKeys,
  deriveUserKeys,
  generateDeviceKeys,
  generateEpochSecret,
  generateRootKey,
  signRecoveryReset,
  signRevocation,
} from '@keel/engine';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { TrustBook, type TrustView, chooseWriteEpoch, epochMetaOf, isEpochClean } from '../src/trust-book.js';

interface World {
  user: UserKeys;
  recovery: RecoveryKeys;
  /** d0 is the first device; d1, d2 registered by d0; d3 registered by d2; d4 registered by d2 and vouched for by d1. */
  devices: DeviceKeys[];
  certs: DeviceCertificate[];
}

let world: World;

beforeAll(async () => {
  await cryptoReady();
  const user = deriveUserKeys(generateRootKey());
  const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
  const devices = Array.from({ length: 5 }, () => generateDeviceKeys());
  const [d0, d1, d2, d3, d4] = devices as [DeviceKeys, DeviceKeys, DeviceKeys, DeviceKeys, DeviceKeys];
  const certs = [
    certifyFirstDevice(user, d0, 1, recovery.publicKey),
    certifyDevice(user, d0, d1.publicKey, 2),
    certifyDevice(user, d0, d2.publicKey, 3),
    certifyDevice(user, d2, d3.publicKey, 4),
    certifyDevice(user, d2, d4.publicKey, 5),
    certifyDevice(user, d1, d4.publicKey, 6),
  ];
  world = { user, recovery, devices, certs };
});

const d = (i: number): DeviceKeys => world.devices[i]!;
const bookFor = (self: DeviceKeys = d(0)) => new TrustBook({ user: world.user.userId, self, recoveryKey: world.recovery.publicKey });
const revoke = (target: number, issuer: number, at = 100): Revocation => signRevocation(world.user.userId, d(target).deviceId, d(issuer), at);
const liveIds = (view: TrustView) => [...view.live.keys()].sort();
const ids = (...indexes: number[]) => indexes.map((i) => d(i).deviceId).sort();

describe('TrustBook liveness', () => {
  it('every verified device is live and an author until something is revoked', () => {
    const book = bookFor();
    expect(book.add({ certs: world.certs }).changed).toBe(true);
    expect(liveIds(book.view())).toEqual(ids(0, 1, 2, 3, 4));
    expect(book.view().nonLive.size).toBe(0);
  });

  it('a revocation cascades to what the revoked device registered, except what a live device vouched for', () => {
    const book = bookFor();
    book.add({ certs: world.certs, revocations: [revoke(2, 0)] });
    expect(liveIds(book.view())).toEqual(ids(0, 1, 4));
    expect([...book.view().nonLive].sort()).toEqual(ids(2, 3));
    // Revoked devices stay authors: what they wrote before still verifies.
    expect([...book.view().authors.keys()].sort()).toEqual(ids(0, 1, 2, 3, 4));
  });

  it('a revocation never takes the device that made it: revoking the first device from one it linked keeps that one and what it linked live', () => {
    // d2 (linked by d0) revokes d0, the lost first device: as on the relay, d2 survives, and d3,
    // which d2 linked, with it; d1 hung only from d0 and goes; d4 stays through d2.
    const book = bookFor(d(2));
    book.add({ certs: world.certs, revocations: [revoke(0, 2)] });
    expect(liveIds(book.view())).toEqual(ids(2, 3, 4));
    expect([...book.view().nonLive].sort()).toEqual(ids(0, 1));
    expect(book.view().selfRevoked).toBe(false);
    // Deeper: d3 (linked by d2, linked by d0) revokes d0; d2 hung only from d0 and goes, d3
    // stays; d4 hung from d2 and d1, both gone with d0, so it goes too.
    const deeper = bookFor(d(3));
    deeper.add({ certs: world.certs, revocations: [revoke(0, 3)] });
    expect(liveIds(deeper.view())).toEqual(ids(3));
  });

  it('a device another revocation cut off does not revive itself by signing one', () => {
    // d0 revokes d2, which takes d3 with it. d3 (a thief holding a cut-off device) revokes d0:
    // that revocation counts (any author may revoke; the recovery key settles it), but d3 stays cut off.
    const book = bookFor(d(1));
    book.add({ certs: world.certs, revocations: [revoke(2, 0), revoke(0, 3, 200)] });
    expect(book.view().live.has(d(3).deviceId)).toBe(false);
    expect(book.view().live.has(d(0).deviceId)).toBe(false);
    // Two devices revoking each other are both out until a reset decides.
    const mutual = bookFor(d(0));
    mutual.add({ certs: world.certs, revocations: [revoke(2, 1), revoke(1, 2)] });
    expect(liveIds(mutual.view())).toEqual(ids(0));
  });

  it('ignores forged records: a revocation, certificate or reset signed by a key that is not the user’s', () => {
    const book = bookFor();
    const stranger = generateDeviceKeys();
    const forgedRevocation = { ...revoke(1, 0), sig: signRevocation(world.user.userId, d(1).deviceId, stranger, 100).sig };
    const forgedCert = certifyFirstDevice({ ...world.user, userSecretKey: generateDeviceKeys().secretKey }, stranger, 1);
    const notRecovery = deriveRecoveryKeys(createRecoverySecret().entropy);
    const forgedReset = signRecoveryReset(world.user.userId, [stranger.deviceId], 1, notRecovery, 200);
    book.add({ certs: [...world.certs, forgedCert], revocations: [forgedRevocation], reset: forgedReset });
    expect(liveIds(book.view())).toEqual(ids(0, 1, 2, 3, 4));
    expect(book.view().authors.has(stranger.deviceId)).toBe(false);
    expect(book.reset).toBeUndefined();
  });

  it('the relay re-sending a revoked device’s certificate changes nothing', () => {
    const book = bookFor();
    book.add({ certs: world.certs, revocations: [revoke(1, 0)] });
    expect(book.add({ certs: world.certs }).changed).toBe(false);
    // Even a new certificate for it (a vouch from a live device) does not lift a revocation.
    expect(book.add({ certs: [certifyDevice(world.user, d(0), d(1).publicKey, 500)] }).changed).toBe(true);
    expect(book.view().live.has(d(1).deviceId)).toBe(false);
  });

  it('this device is always live for its own sealing, and learns it is revoked only from a verified record', () => {
    const book = bookFor(d(3));
    book.add({ certs: world.certs });
    expect(book.view().selfRevoked).toBe(false);
    book.add({ revocations: [revoke(2, 0)] });
    expect(book.view().selfRevoked).toBe(true);
    expect(book.view().live.has(d(3).deviceId)).toBe(true);
    expect(book.view().nonLive.has(d(3).deviceId)).toBe(false);
  });

  describe('under a recovery reset', () => {
    it('the kept devices are the roots: revocations of them made before the reset are void, later ones count', () => {
      const book = bookFor(d(1));
      // The thief (d2) revoked d0 and d1; the owner's reset keeps d0 and d1.
      book.add({ certs: world.certs, revocations: [revoke(0, 2, 100), revoke(1, 2, 101)] });
      expect(book.view().live.has(d(0).deviceId)).toBe(false);
      const reset = signRecoveryReset(world.user.userId, [d(0).deviceId, d(1).deviceId], 1, world.recovery, 200);
      book.add({ reset });
      expect(liveIds(book.view())).toEqual(ids(0, 1, 4).filter((id) => id !== d(4).deviceId).sort());
      // d4 was vouched for by d1 before the reset: not kept, so revoked by it.
      expect([...book.view().nonLive].sort()).toEqual(ids(2, 3, 4));
      // A revocation from the thief after the reset is void (it is not live under the reset)...
      book.add({ revocations: [revoke(0, 2, 300)] });
      expect(book.view().live.has(d(0).deviceId)).toBe(true);
      // ...one from a kept device after the reset counts.
      book.add({ revocations: [revoke(0, 1, 301)] });
      expect(book.view().live.has(d(0).deviceId)).toBe(false);
    });

    it('a device enrolled by the recovery key and kept is live; a device a kept device registers afterwards too', () => {
      const fresh = generateDeviceKeys();
      const later = generateDeviceKeys();
      const book = bookFor(d(1));
      const enrolled = certifyByRecovery(world.user, world.recovery, fresh.publicKey, 150);
      const reset = signRecoveryReset(world.user.userId, [fresh.deviceId], 1, world.recovery, 200);
      book.add({ certs: [...world.certs, enrolled, certifyDevice(world.user, fresh, later.publicKey, 250)], reset });
      expect([...book.view().live.keys()].sort()).toEqual([fresh.deviceId, later.deviceId, d(1).deviceId].sort());
      expect(book.view().selfRevoked).toBe(true);
    });

    it('keeps the newest reset only', () => {
      const book = bookFor();
      const first = signRecoveryReset(world.user.userId, [d(0).deviceId], 2, world.recovery, 200);
      const older = signRecoveryReset(world.user.userId, [d(1).deviceId], 1, world.recovery, 100);
      book.add({ certs: world.certs, reset: first });
      expect(book.add({ reset: older }).changed).toBe(false);
      expect(book.reset?.gen).toBe(2);
    });
  });

  describe('properties', () => {
    /** Every record of a scenario: all certificates, some revocations, maybe a reset. */
    const scenario = fc.record({
      revocations: fc.subarray([
        [2, 0, 100],
        [1, 0, 110],
        [0, 2, 120],
        [4, 1, 130],
        [3, 4, 140],
        [0, 1, 300],
      ] as const),
      reset: fc.option(fc.subarray([0, 1, 2, 3, 4], { minLength: 1 }), { nil: undefined }),
      seed: fc.nat(),
    });
    type Item = { cert: DeviceCertificate } | { revocation: Revocation } | { reset: ReturnType<typeof signRecoveryReset> };
    const itemsOf = (s: { revocations: readonly (readonly [number, number, number])[]; reset: number[] | undefined }): Item[] => [
      ...world.certs.map((cert) => ({ cert })),
      ...s.revocations.map(([t, i, at]) => ({ revocation: revoke(t, i, at) })),
      ...(s.reset ? [{ reset: signRecoveryReset(world.user.userId, s.reset.map((i) => d(i).deviceId), 1, world.recovery, 200) }] : []),
    ];
    const feed = (book: TrustBook, batches: Item[][]) => {
      for (const batch of batches) {
        const certs = batch.flatMap((x) => ('cert' in x ? [x.cert] : []));
        const revocations = batch.flatMap((x) => ('revocation' in x ? [x.revocation] : []));
        const reset = batch.find((x) => 'reset' in x);
        book.add({ certs, revocations, ...(reset && 'reset' in reset ? { reset: reset.reset } : {}) });
      }
    };

    it('the order and batching in which records arrive does not change liveness', () => {
      fc.assert(
        fc.property(scenario, fc.infiniteStream(fc.nat()), (s, rand) => {
          const items = itemsOf(s);
          const all = bookFor();
          feed(all, [items]);
          // A random order, cut into random batches (one frame each).
          const order = [...items];
          for (let i = order.length - 1; i > 0; i--) {
            const j = rand.next().value % (i + 1);
            [order[i], order[j]] = [order[j]!, order[i]!];
          }
          const batches: Item[][] = [];
          for (const item of order) {
            if (batches.length === 0 || rand.next().value % 3 === 0) batches.push([]);
            batches.at(-1)!.push(item);
          }
          const shuffled = bookFor();
          feed(shuffled, batches);
          expect(liveIds(shuffled.view())).toEqual(liveIds(all.view()));
          expect([...shuffled.view().nonLive].sort()).toEqual([...all.view().nonLive].sort());
        }),
        { seed: 6_2026, numRuns: 60 },
      );
    });

    it('without a reset, a revocation seen once wins over any certificate that arrives later', () => {
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 20 }), (target, later) => {
          const book = bookFor();
          book.add({ certs: world.certs.slice(0, 3), revocations: [revoke(target, 0)] });
          // The relay sends every certificate again, new vouches for the target from every live device included.
          const vouches = Array.from({ length: later }, (_, i) => certifyDevice(world.user, d(i % 2 === 0 ? 0 : target === 1 ? 0 : 1), d(target).publicKey, 1_000 + i));
          book.add({ certs: [...world.certs, ...vouches] });
          expect(book.view().live.has(d(target).deviceId)).toBe(false);
          expect(book.view().nonLive.has(d(target).deviceId)).toBe(true);
        }),
        { seed: 6_2027, numRuns: 40 },
      );
    });
  });
});

describe('TrustBook cost and storage', () => {
  it('N device frames cost O(N) signature checks, however often the relay repeats them', () => {
    const book = bookFor();
    book.add({ certs: [world.certs[0]!] });
    const many = Array.from({ length: 200 }, () => certifyDevice(world.user, d(0), generateDeviceKeys().publicKey, 7));
    const before = book.verifications;
    for (const cert of many) book.add({ certs: [cert] });
    for (const cert of many) book.add({ certs: [cert] });
    book.add({ certs: many });
    expect(book.verifications - before).toBe(200);
    expect(book.view().live.size).toBe(201);
  });

  it('orphan certificates wait for their issuer, bounded, and never push out verified ones', () => {
    const book = bookFor();
    book.add({ certs: world.certs.slice(0, 1) });
    const orphanIssuer = generateDeviceKeys();
    const orphans = Array.from({ length: 600 }, () => certifyDevice(world.user, orphanIssuer, generateDeviceKeys().publicKey, 9));
    for (const cert of orphans) book.add({ certs: [cert] });
    expect(book.verifications).toBe(1);
    // The issuer arrives last: the most recent orphans (the bound) verify then.
    book.add({ certs: [certifyDevice(world.user, d(0), orphanIssuer.publicKey, 8)] });
    expect(book.toStored().certs.length).toBeLessThanOrEqual(256);
    expect(book.view().live.has(d(0).deviceId)).toBe(true);
  });

  it('round-trips through its stored form and verifies it again; a stored form that does not parse is empty', () => {
    const book = bookFor();
    book.add({ certs: world.certs, revocations: [revoke(2, 0)], reset: signRecoveryReset(world.user.userId, [d(0).deviceId, d(1).deviceId], 1, world.recovery, 200) });
    const restored = TrustBook.restore({ user: world.user.userId, self: d(0), recoveryKey: world.recovery.publicKey }, JSON.parse(JSON.stringify(book.toStored())));
    expect(liveIds(restored.view())).toEqual(liveIds(book.view()));
    expect(restored.toStored()).toEqual(book.toStored());
    const tampered = { ...book.toStored(), revocations: [{ ...revoke(1, 0), at: 5 }] };
    const fromTampered = TrustBook.restore({ user: world.user.userId, self: d(0), recoveryKey: world.recovery.publicKey }, tampered);
    expect(fromTampered.view().live.has(d(1).deviceId)).toBe(true);
    expect(liveIds(TrustBook.restore({ user: world.user.userId, self: d(0) }, { v: 9 }).view())).toEqual([d(0).deviceId]);
  });
});

describe('key epochs', () => {
  it('an epoch is clean while no holder is known non-live; the device writes under the newest clean one', () => {
    const book = bookFor();
    book.add({ certs: world.certs });
    const secret = generateEpochSecret();
    const live = (...indexes: number[]) => new Map(indexes.map((i) => [d(i).deviceId, d(i).publicKey] as const));
    const e1 = createEpochRecord(world.user.userId, 1, d(0), secret, live(0, 1, 2), 10);
    const e2 = createEpochRecord(world.user.userId, 2, d(2), secret, live(0, 2), 20);
    expect(book.verifiesEpoch(e1)).toBe(true);
    expect(book.verifiesEpoch({ ...e1, epoch: 5 })).toBe(false);
    const held = [[0, undefined], [1, epochMetaOf(e1)], [2, epochMetaOf(e2)]] as const;
    expect(chooseWriteEpoch(held, book.view())).toBe(2);
    book.add({ revocations: [revoke(2, 0)] });
    // d2 held 0, 1 and 2 (it issued 2): none is clean, the device must rotate.
    expect(held.map(([, meta]) => isEpochClean(meta, book.view()))).toEqual([false, false, false]);
    expect(chooseWriteEpoch(held, book.view())).toBeUndefined();
    const e3 = createEpochRecord(world.user.userId, 3, d(0), secret, live(0, 1, 4), 30);
    expect(chooseWriteEpoch([...held, [3, epochMetaOf(e3)]], book.view())).toBe(3);
  });

  it('a device linked after an epoch was made counts as its holder (its grant carried the secret)', () => {
    const book = bookFor();
    book.add({ certs: world.certs });
    const e1 = createEpochRecord(world.user.userId, 1, d(0), generateEpochSecret(), new Map([[d(0).deviceId, d(0).publicKey]]), 10);
    const linked = generateDeviceKeys();
    book.add({ certs: [certifyDevice(world.user, d(0), linked.publicKey, 11)] });
    expect(isEpochClean(epochMetaOf(e1), book.view())).toBe(true);
    book.add({ revocations: [signRevocation(world.user.userId, linked.deviceId, d(0), 12)] });
    expect(isEpochClean(epochMetaOf(e1), book.view())).toBe(false);
    // d1 was linked before the epoch and not sealed to: revoking it leaves the epoch clean.
    book.add({ revocations: [revoke(1, 0)] });
    const e2 = createEpochRecord(world.user.userId, 2, d(0), generateEpochSecret(), new Map([[d(0).deviceId, d(0).publicKey]]), 20);
    expect(isEpochClean(epochMetaOf(e2), book.view())).toBe(true);
  });
});
