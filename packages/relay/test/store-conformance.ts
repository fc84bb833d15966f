import {
  type DeviceCertificate,
  type DeviceId,
  type DeviceKeys,
  type DocId,
  type Envelope,
  ErrorCode,
  type RecoveryKeys,
  type UserId,
  type UserKeys,
  asSeq,
  certifyByRecovery,
  certifyDevice,
  certifyFirstDevice,
  createRecoverySecret,
  cryptoReady,
  deriveRecoveryKeys,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  deriveUserKeys,
  generateDeviceKeys,
  generateRootKey,
  sealEnvelope,
  sealRootKeyEscrow,
  signRecoveryReset,
  signRevocation,
} from '@keel/engine';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { GENESIS_HASH, verifyAuditRows } from '../src/audit/audit-chain.js';
import type { AppendOutcome, AppendRequest, AuditDraft, GraceRecord, RelayStore, SubscriptionRecord } from '../src/storage/relay-store.js';

/** What a store implementation hands the suite for one test. */
export interface RelayStoreHarness {
  readonly store: RelayStore;
  /**
   * Opens the same durable state again after the suite closed `store`. Omit for stores that
   * keep nothing across close (the persistence test is then skipped).
   */
  readonly reopen?: () => Promise<RelayStore>;
  /** Removes whatever `open` created. Runs after the suite closed every store it was handed. */
  readonly cleanup: () => Promise<void>;
}

const T0 = 1_700_000_000_000;
const LIMITS = { maxLive: 32, maxTotal: 256 };
const encoder = new TextEncoder();

interface Account {
  readonly keys: UserKeys;
  readonly device: DeviceKeys;
  readonly cert: DeviceCertificate;
}

/** A new user with a first device certified by the user key, not yet registered. */
const newAccount = (issuedAt = T0): Account => {
  const keys = deriveUserKeys(generateRootKey());
  const device = generateDeviceKeys();
  return { keys, device, cert: certifyFirstDevice(keys, device, issuedAt) };
};

interface RecoveringAccount extends Account {
  readonly recovery: RecoveryKeys;
  readonly escrow: string;
}

/** A new user whose first device's certificate names a recovery key, with the root key escrowed to it. */
const newRecoveringAccount = (issuedAt = T0): RecoveringAccount => {
  const keys = deriveUserKeys(generateRootKey());
  const device = generateDeviceKeys();
  const recovery = deriveRecoveryKeys(createRecoverySecret().entropy);
  return {
    keys,
    device,
    recovery,
    cert: certifyFirstDevice(keys, device, issuedAt, recovery.publicKey),
    escrow: sealRootKeyEscrow(keys.userId, keys.rootKey, recovery.publicKey),
  };
};

/** Seals a real, signed envelope under the owner's epoch-0 document key. */
const seal = (owner: UserKeys, author: DeviceKeys, doc: DocId, counter: number, text = `update #${counter}`, lane = 5): Envelope =>
  sealEnvelope({ doc, kind: 'update', epoch: 0, device: author.deviceId, counter, lane }, encoder.encode(text), {
    key: deriveDocKey(deriveEpochZeroSecret(owner.rootKey), doc, 0),
    signingKey: author.secretKey,
  });

const request = (owner: UserKeys, env: Envelope): AppendRequest => ({ userId: owner.userId, env });

/** One short string per outcome, so a whole batch compares in one readable assertion. */
const summarize = (outcomes: readonly AppendOutcome[]): string[] =>
  outcomes.map((o) => (o.status === 'rejected' ? `rejected:${o.error.code}` : `${o.status}:${o.seq}`));

const byDeviceId = <T extends { readonly deviceId: string }>(records: readonly T[]): T[] =>
  [...records].sort((a, b) => (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0));

/**
 * The behaviour every RelayStore must share (SQLite now, PostgreSQL later), checked with real
 * certificates and sealed envelopes. `open` is called once per test.
 */
export const runRelayStoreConformance = (name: string, open: () => Promise<RelayStoreHarness>): void => {
  describe(`RelayStore conformance: ${name}`, () => {
    let harness: RelayStoreHarness | undefined;
    /** The store the current test holds open; afterEach closes it. */
    let live: RelayStore | undefined;

    beforeAll(async () => {
      await cryptoReady();
    });

    beforeEach(async () => {
      harness = await open();
      live = harness.store;
    });

    afterEach(async () => {
      try {
        await live?.close();
      } finally {
        live = undefined;
        await harness?.cleanup();
        harness = undefined;
      }
    });

    const store = (): RelayStore => {
      if (!live) throw new Error('no open store');
      return live;
    };

    /** Registers an account's first device and fails the test if the store refuses it. */
    const registered = async (account = newAccount()): Promise<Account> => {
      const result = await store().registerDevice(account.cert, account.device.publicKey, account.keys.userPublicKey, T0, LIMITS);
      expect(result.ok).toBe(true);
      return account;
    };

    /** Revokes `device` of `user` by a revocation `by` signed at `at`. */
    const revoke = (user: UserId, device: DeviceId, by: DeviceKeys, at: number) => store().revokeDevice(signRevocation(user, device, by, at), at);

    const docOf = (account: Account, docName = 'journal'): DocId => deriveDocId(account.keys.docIdKey, 'mood', docName);

    describe('devices', () => {
      it('registers the first device of a new user, certified by the user key, and creates the user', async () => {
        const a = newAccount();
        expect(await store().getDevice(a.device.deviceId)).toBeUndefined();
        expect(await store().listDevices(a.keys.userId)).toEqual([]);

        const result = await store().registerDevice(a.cert, a.device.publicKey, a.keys.userPublicKey, T0 + 5, LIMITS);
        if (!result.ok) throw new Error(`refused: ${result.error.code} ${result.error.message}`);
        const expected = {
          deviceId: a.device.deviceId,
          userId: a.keys.userId,
          publicKey: a.device.publicKey,
          cert: a.cert,
          registeredAt: T0 + 5,
          revokedAt: null,
        };
        expect(result.value).toEqual(expected);
        expect(result.value.cert.issuer).toBeNull();
        expect(await store().getDevice(a.device.deviceId)).toEqual(expected);
        expect(await store().listDevices(a.keys.userId)).toEqual([expected]);
      });

      it('refuses a second user-key certificate once the user has a device (BAD_CERTIFICATE)', async () => {
        const a = await registered();
        const intruder = generateDeviceKeys();
        const cert = certifyFirstDevice(a.keys, intruder, T0 + 1);

        const result = await store().registerDevice(cert, intruder.publicKey, a.keys.userPublicKey, T0 + 1, LIMITS);
        expect(result.ok ? 'registered' : result.error.code).toBe(ErrorCode.BAD_CERTIFICATE);
        expect(await store().getDevice(intruder.deviceId)).toBeUndefined();
        expect((await store().listDevices(a.keys.userId)).map((d) => d.deviceId)).toEqual([a.device.deviceId]);
      });

      it('refuses a device-issued certificate for a user it has never seen (BAD_CERTIFICATE)', async () => {
        const stranger = newAccount();
        const second = generateDeviceKeys();
        const cert = certifyDevice(stranger.keys, stranger.device, second.publicKey, T0);

        const result = await store().registerDevice(cert, second.publicKey, stranger.keys.userPublicKey, T0, LIMITS);
        expect(result.ok ? 'registered' : result.error.code).toBe(ErrorCode.BAD_CERTIFICATE);
        expect(await store().getDevice(second.deviceId)).toBeUndefined();
        expect(await store().listDevices(stranger.keys.userId)).toEqual([]);
      });

      it('registers a device certified by an existing device of the same user', async () => {
        const a = await registered();
        const phone = generateDeviceKeys();
        const cert = certifyDevice(a.keys, a.device, phone.publicKey, T0 + 10);

        const result = await store().registerDevice(cert, phone.publicKey, a.keys.userPublicKey, T0 + 20, LIMITS);
        if (!result.ok) throw new Error(`refused: ${result.error.code} ${result.error.message}`);
        expect(result.value).toEqual({
          deviceId: phone.deviceId,
          userId: a.keys.userId,
          publicKey: phone.publicKey,
          cert,
          registeredAt: T0 + 20,
          revokedAt: null,
        });
        expect(result.value.cert.issuer).toBe(a.device.deviceId);
        expect(await store().getDevice(phone.deviceId)).toEqual(result.value);
      });

      it('treats registering the same device again as a no-op that returns the original record', async () => {
        const a = newAccount();
        const first = await store().registerDevice(a.cert, a.device.publicKey, a.keys.userPublicKey, T0, LIMITS);
        const again = await store().registerDevice(a.cert, a.device.publicKey, a.keys.userPublicKey, T0 + 1000, LIMITS);
        expect(first.ok).toBe(true);
        expect(again).toEqual(first);

        const phone = generateDeviceKeys();
        const cert = certifyDevice(a.keys, a.device, phone.publicKey, T0);
        const second = await store().registerDevice(cert, phone.publicKey, a.keys.userPublicKey, T0 + 1, LIMITS);
        const secondAgain = await store().registerDevice(cert, phone.publicKey, a.keys.userPublicKey, T0 + 2000, LIMITS);
        expect(second.ok).toBe(true);
        expect(secondAgain).toEqual(second);
        expect(await store().listDevices(a.keys.userId)).toHaveLength(2);
      });

      it('refuses a device already registered to another user (BAD_CERTIFICATE) and creates no user', async () => {
        const a = await registered();
        // Same device key, certified by a different user's key: the device id is the same.
        const other = deriveUserKeys(generateRootKey());
        const cert = certifyFirstDevice(other, a.device, T0 + 1);
        expect(cert.device).toBe(a.device.deviceId);

        const result = await store().registerDevice(cert, a.device.publicKey, other.userPublicKey, T0 + 1, LIMITS);
        expect(result.ok ? 'registered' : result.error.code).toBe(ErrorCode.BAD_CERTIFICATE);
        expect((await store().getDevice(a.device.deviceId))?.userId).toBe(a.keys.userId);
        expect(await store().listDevices(other.userId)).toEqual([]);
      });

      it("lists exactly a user's own devices", async () => {
        const a = await registered();
        const b = await registered();
        const extra = [generateDeviceKeys(), generateDeviceKeys()];
        for (const [i, device] of extra.entries()) {
          const cert = certifyDevice(a.keys, a.device, device.publicKey, T0 + i);
          expect((await store().registerDevice(cert, device.publicKey, a.keys.userPublicKey, T0 + i, LIMITS)).ok).toBe(true);
        }

        const listed = byDeviceId(await store().listDevices(a.keys.userId));
        const expectedIds = [a.device, ...extra].map((d) => d.deviceId).sort();
        expect(listed.map((d) => d.deviceId)).toEqual(expectedIds);
        for (const record of listed) {
          expect(record.userId).toBe(a.keys.userId);
          expect(await store().getDevice(record.deviceId)).toEqual(record);
        }
        expect((await store().listDevices(b.keys.userId)).map((d) => d.deviceId)).toEqual([b.device.deviceId]);
        expect(await store().listDevices(newAccount().keys.userId)).toEqual([]);
      });
    });

    describe('recovery, revocation cascades and vouches', () => {
      const registerRecovering = async (account = newRecoveringAccount()): Promise<RecoveringAccount> => {
        const result = await store().registerDevice(account.cert, account.device.publicKey, account.keys.userPublicKey, T0, LIMITS, account.escrow);
        if (!result.ok) throw new Error(`refused: ${result.error.code} ${result.error.message}`);
        return account;
      };
      /** Registers a device certified by `issuer` (a device of `owner`); returns its keys. */
      const link = async (owner: Account, issuer: DeviceKeys, at = T0 + 1): Promise<DeviceKeys> => {
        const device = generateDeviceKeys();
        const result = await store().registerDevice(certifyDevice(owner.keys, issuer, device.publicKey, at), device.publicKey, owner.keys.userPublicKey, at, LIMITS);
        if (!result.ok) throw new Error(`refused: ${result.error.code} ${result.error.message}`);
        return device;
      };
      const liveIds = async (owner: Account): Promise<string[]> =>
        (await store().listDevices(owner.keys.userId)).filter((d) => d.revokedAt === null).map((d) => d.deviceId).sort();
      const ids = (...devices: DeviceKeys[]): string[] => devices.map((d) => d.deviceId).sort();

      it('keeps the recovery key the first certificate names, generation 0 and the escrow; finds the user by it', async () => {
        const a = await registerRecovering();
        const recovery = await store().getRecovery(a.keys.userId);
        expect(recovery).toEqual({ userId: a.keys.userId, userKey: a.keys.userPublicKey, recoveryKey: a.recovery.publicKey, gen: 0, escrow: a.escrow, reset: null });
        expect(await store().findRecoveryUser(a.recovery.publicKey)).toEqual(recovery);
        expect(await store().findRecoveryUser(deriveRecoveryKeys(createRecoverySecret().entropy).publicKey)).toBeUndefined();
        // The certificate comes back exactly as signed, recovery key included.
        expect((await store().getDevice(a.device.deviceId))?.cert).toEqual(a.cert);
        // Users created without one have none.
        const legacy = await registered();
        expect(await store().getRecovery(legacy.keys.userId)).toBeUndefined();
        expect((await store().getDevice(legacy.device.deviceId))?.cert).toEqual(legacy.cert);
      });

      it('refuses a new user whose first certificate names a recovery key another user has', async () => {
        const a = await registerRecovering();
        const b = newAccount();
        const cert = certifyFirstDevice(b.keys, b.device, T0, a.recovery.publicKey);
        const result = await store().registerDevice(cert, b.device.publicKey, b.keys.userPublicKey, T0, LIMITS, a.escrow);
        expect(result.ok ? 'registered' : result.error.code).toBe(ErrorCode.BAD_CERTIFICATE);
        expect(await store().listDevices(b.keys.userId)).toEqual([]);
        expect((await store().findRecoveryUser(a.recovery.publicKey))?.userId).toBe(a.keys.userId);
      });

      it('registers a device the recovery key certified, only for a user that has one', async () => {
        const a = await registerRecovering();
        const n = generateDeviceKeys();
        const cert = certifyByRecovery(a.keys, a.recovery, n.publicKey, T0 + 1);
        const result = await store().registerDevice(cert, n.publicKey, a.keys.userPublicKey, T0 + 1, LIMITS);
        expect(result.ok && result.value.cert).toEqual(cert);
        const legacy = await registered();
        const m = generateDeviceKeys();
        const refused = await store().registerDevice(certifyByRecovery(legacy.keys, a.recovery, m.publicKey, T0), m.publicKey, legacy.keys.userPublicKey, T0, LIMITS);
        expect(refused.ok ? 'registered' : refused.error.code).toBe(ErrorCode.RECOVERY_UNKNOWN);
      });

      it('applies a reset once: keeps (and reinstates) the devices it names, revokes every other, refuses a replay', async () => {
        const a = await registerRecovering();
        const laptop = await link(a, a.device);
        const thief = await link(a, a.device);
        // The thief revokes the owner's devices (the thief's own device is never cascaded).
        expect((await revoke(a.keys.userId, a.device.deviceId, thief, T0 + 2)).ok).toBe(true);
        expect((await revoke(a.keys.userId, laptop.deviceId, thief, T0 + 2)).ok).toBe(true);
        expect(await liveIds(a)).toEqual(ids(thief));

        const reset = signRecoveryReset(a.keys.userId, [a.device.deviceId, laptop.deviceId], 1, a.recovery, T0 + 3);
        const applied = await store().applyRecoveryReset(reset, undefined, T0 + 3, LIMITS);
        if (!applied.ok) throw new Error(applied.error.message);
        expect(applied.value.revoked.map((d) => d.deviceId)).toEqual([thief.deviceId]);
        expect(applied.value.revoked[0]!.revokedAt).toBe(T0 + 3);
        expect(applied.value.kept.map((d) => d.deviceId).sort()).toEqual(ids(a.device, laptop));
        expect(applied.value.enrolled).toBeUndefined();
        expect(await liveIds(a)).toEqual(ids(a.device, laptop));
        expect((await store().getRecovery(a.keys.userId))?.gen).toBe(1);

        // The same statement again, or one that skips a generation: refused, nothing changes.
        for (const again of [reset, signRecoveryReset(a.keys.userId, [thief.deviceId], 3, a.recovery, T0 + 4)]) {
          const refused = await store().applyRecoveryReset(again, undefined, T0 + 4, LIMITS);
          expect(refused.ok ? 'applied' : refused.error.code).toBe(ErrorCode.RECOVERY_REPLAYED);
        }
        expect(await liveIds(a)).toEqual(ids(a.device, laptop));
        // A revoked device cannot revoke anyone.
        const byThief = await revoke(a.keys.userId, laptop.deviceId, thief, T0 + 5);
        expect(byThief.ok ? 'revoked' : byThief.error.code).toBe(ErrorCode.DEVICE_REVOKED);
        expect(await liveIds(a)).toEqual(ids(a.device, laptop));
      });

      it('enrols the recovering device in the reset, within the device limits, or changes nothing', async () => {
        const a = await registerRecovering();
        const laptop = await link(a, a.device);
        const other = await registerRecovering();
        const n = generateDeviceKeys();
        const enrol = { cert: certifyByRecovery(a.keys, a.recovery, n.publicKey, T0 + 2), publicKey: n.publicKey, userKey: a.keys.userPublicKey };
        const refusals = [
          // The enrolled device must be one it keeps.
          [signRecoveryReset(a.keys.userId, [laptop.deviceId], 1, a.recovery, T0), enrol, LIMITS, ErrorCode.RECOVERY_INVALID],
          // Every kept device must be this user's.
          [signRecoveryReset(a.keys.userId, [n.deviceId, other.device.deviceId], 1, a.recovery, T0), enrol, LIMITS, ErrorCode.RECOVERY_INVALID],
          // Registrations ever made, revoked ones included, are bounded.
          [signRecoveryReset(a.keys.userId, [n.deviceId], 1, a.recovery, T0), enrol, { maxLive: 32, maxTotal: 2 }, ErrorCode.LIMIT_EXCEEDED],
          [signRecoveryReset(a.keys.userId, [n.deviceId, laptop.deviceId], 1, a.recovery, T0), enrol, { maxLive: 1, maxTotal: 256 }, ErrorCode.LIMIT_EXCEEDED],
        ] as const;
        for (const [reset, enrolment, limits, code] of refusals) {
          const refused = await store().applyRecoveryReset(reset, enrolment, T0 + 2, limits);
          expect(refused.ok ? 'applied' : refused.error.code).toBe(code);
          expect(await store().getDevice(n.deviceId)).toBeUndefined();
          expect(await liveIds(a)).toEqual(ids(a.device, laptop));
          expect((await store().getRecovery(a.keys.userId))?.gen).toBe(0);
        }

        const applied = await store().applyRecoveryReset(signRecoveryReset(a.keys.userId, [n.deviceId], 1, a.recovery, T0), enrol, T0 + 3, LIMITS);
        if (!applied.ok) throw new Error(applied.error.message);
        expect(applied.value.enrolled?.cert).toEqual(enrol.cert);
        expect(applied.value.revoked.map((d) => d.deviceId).sort()).toEqual(ids(a.device, laptop));
        expect(await liveIds(a)).toEqual(ids(n));
        expect(await liveIds(other)).toEqual(ids(other.device));
      });

      it('revokes the devices a revoked device registered, transitively, unless a live device vouched for them', async () => {
        const a = await registerRecovering();
        const laptop = await link(a, a.device);
        const thief = await link(a, a.device);
        const [orphan, vouched] = [await link(a, thief), await link(a, thief)];
        const grandchild = await link(a, orphan);
        const underVouched = await link(a, vouched);
        // Devices of the thief's line vouching for each other keep nothing alive.
        const [x, y] = [await link(a, thief), await link(a, thief)];
        for (const [issuer, subject] of [[x, y], [y, x]] as const) {
          expect((await store().putVouch(certifyDevice(a.keys, issuer, subject.publicKey, T0 + 2), T0 + 2, 32)).ok).toBe(true);
        }
        const vouch = certifyDevice(a.keys, laptop, vouched.publicKey, T0 + 2);
        expect(await store().putVouch(vouch, T0 + 2, 32)).toEqual({ ok: true, value: vouch });

        const revoked = await revoke(a.keys.userId, thief.deviceId, a.device, T0 + 3);
        if (!revoked.ok) throw new Error(revoked.error.message);
        expect(revoked.value[0]!.deviceId).toBe(thief.deviceId);
        expect(revoked.value.map((d) => d.deviceId).sort()).toEqual(ids(thief, orphan, grandchild, x, y));
        expect(revoked.value.every((d) => d.revokedAt === T0 + 3)).toBe(true);
        expect(await liveIds(a)).toEqual(ids(a.device, laptop, vouched, underVouched));
      });

      it('never cascades to the revoking device or to devices the user key or the recovery key enrolled', async () => {
        const a = await registerRecovering();
        const laptop = await link(a, a.device);
        const tablet = await link(a, laptop);
        const n = generateDeviceKeys();
        expect((await store().registerDevice(certifyByRecovery(a.keys, a.recovery, n.publicKey, T0), n.publicKey, a.keys.userPublicKey, T0, LIMITS)).ok).toBe(true);
        // The laptop retires the phone that linked it: the laptop and what it linked stay.
        const revoked = await revoke(a.keys.userId, a.device.deviceId, laptop, T0 + 2);
        expect(revoked.ok && revoked.value.map((d) => d.deviceId)).toEqual([a.device.deviceId]);
        expect(await liveIds(a)).toEqual(ids(laptop, tablet, n));
        const again = await revoke(a.keys.userId, n.deviceId, laptop, T0 + 3);
        expect(again.ok && again.value.map((d) => d.deviceId)).toEqual([n.deviceId]);
        expect(await liveIds(a)).toEqual(ids(laptop, tablet));
        const unknown = await revoke(a.keys.userId, generateDeviceKeys().deviceId, laptop, T0 + 4);
        expect(unknown.ok ? 'revoked' : unknown.error.code).toBe(ErrorCode.UNKNOWN_DEVICE);
      });

      it('bounds vouches per device and refuses vouches that do not name a live device by its key', async () => {
        const a = await registerRecovering();
        const subject = await link(a, a.device);
        const vouchers = [await link(a, a.device), await link(a, a.device), await link(a, a.device)];
        const vouchBy = (issuer: DeviceKeys, at = T0 + 2) => certifyDevice(a.keys, issuer, subject.publicKey, at);
        expect((await store().putVouch(vouchBy(vouchers[0]!), T0 + 2, 2)).ok).toBe(true);
        expect((await store().putVouch(vouchBy(vouchers[1]!), T0 + 2, 2)).ok).toBe(true);
        const third = await store().putVouch(vouchBy(vouchers[2]!), T0 + 2, 2);
        expect(third.ok ? 'stored' : third.error.code).toBe(ErrorCode.LIMIT_EXCEEDED);
        // The same issuer again replaces its vouch and counts once.
        const renewed = vouchBy(vouchers[0]!, T0 + 9);
        expect((await store().putVouch(renewed, T0 + 9, 2)).ok).toBe(true);
        expect((await store().listVouches(a.keys.userId)).map((c) => [c.issuer, c.issuedAt])).toEqual(
          [[vouchers[0]!.deviceId, T0 + 9], [vouchers[1]!.deviceId, T0 + 2]].sort(),
        );
        expect(await store().listVouches(a.keys.userId)).toContainEqual(renewed);

        const stranger = generateDeviceKeys();
        const wrongKey = { ...certifyDevice(a.keys, vouchers[2]!, stranger.publicKey, T0), device: subject.deviceId };
        const unknownSubject = certifyDevice(a.keys, vouchers[2]!, stranger.publicKey, T0);
        await revoke(a.keys.userId, vouchers[2]!.deviceId, a.device, T0 + 3);
        const byRevoked = certifyDevice(a.keys, vouchers[2]!, vouchers[0]!.publicKey, T0);
        const byUnknown = certifyDevice(a.keys, stranger, subject.publicKey, T0);
        for (const [cert, code] of [
          [wrongKey, ErrorCode.BAD_CERTIFICATE],
          [unknownSubject, ErrorCode.UNKNOWN_DEVICE],
          [byRevoked, ErrorCode.BAD_CERTIFICATE],
          [byUnknown, ErrorCode.BAD_CERTIFICATE],
        ] as const) {
          const refused = await store().putVouch(cert, T0 + 4, 32);
          expect(refused.ok ? 'stored' : refused.error.code).toBe(code);
        }
        expect(await store().listVouches(a.keys.userId)).toHaveLength(2);
      });

      it('keeps each signed revocation with what it cut off, the cascade included, one record per device', async () => {
        const a = await registerRecovering();
        const laptop = await link(a, a.device);
        const thief = await link(a, a.device);
        const orphan = await link(a, thief);
        const other = await registerRecovering();
        const user = a.keys.userId;

        const first = signRevocation(user, thief.deviceId, a.device, T0 + 3);
        const revoked = await store().revokeDevice(first, T0 + 3);
        expect(revoked.ok && revoked.value.map((d) => d.deviceId)).toEqual([thief.deviceId, orphan.deviceId]);
        // The cascaded device stands on the revocation of the device it hung from.
        expect(await store().revocationRecords(thief.deviceId)).toEqual({ revocation: first });
        expect(await store().revocationRecords(orphan.deviceId)).toEqual({ revocation: first });
        for (const live of [a.device, laptop]) expect(await store().revocationRecords(live.deviceId)).toEqual({});
        expect(await store().revocationRecords(generateDeviceKeys().deviceId)).toEqual({});
        // Listed once, though kept for two devices.
        expect(await store().listRevocations(user, 10)).toEqual([first]);

        // The target revoked again: its record is replaced (one per device); the cascade keeps its own.
        const second = signRevocation(user, thief.deviceId, laptop, T0 + 4);
        expect((await store().revokeDevice(second, T0 + 4)).ok).toBe(true);
        expect(await store().revocationRecords(thief.deviceId)).toEqual({ revocation: second });
        expect(await store().revocationRecords(orphan.deviceId)).toEqual({ revocation: first });
        const third = signRevocation(user, laptop.deviceId, a.device, T0 + 5);
        expect((await store().revokeDevice(third, T0 + 5)).ok).toBe(true);
        expect(await store().listRevocations(user, 10)).toEqual([first, second, third]);
        // Past the limit the newest are kept, oldest first.
        expect(await store().listRevocations(user, 2)).toEqual([second, third]);

        // Refused revocations keep nothing: by a revoked device, of another user's device, of an unknown one.
        const refusals = [
          signRevocation(user, a.device.deviceId, thief, T0 + 6),
          signRevocation(user, other.device.deviceId, a.device, T0 + 6),
          signRevocation(user, generateDeviceKeys().deviceId, a.device, T0 + 6),
        ];
        for (const refused of refusals) expect((await store().revokeDevice(refused, T0 + 6)).ok).toBe(false);
        expect(await store().revocationRecords(a.device.deviceId)).toEqual({});
        expect(await store().revocationRecords(other.device.deviceId)).toEqual({});
        expect(await store().listRevocations(user, 10)).toEqual([first, second, third]);
        expect(await store().listRevocations(other.keys.userId, 10)).toEqual([]);
      });

      it('keeps the latest reset with the user, behind the devices revoked at or before it and never behind one it keeps', async () => {
        const a = await registerRecovering();
        const laptop = await link(a, a.device);
        const thief = await link(a, a.device);
        const user = a.keys.userId;
        // The thief revokes the owner's phone; the owner's reset keeps the phone only.
        const byThief = signRevocation(user, a.device.deviceId, thief, T0 + 2);
        expect((await store().revokeDevice(byThief, T0 + 2)).ok).toBe(true);
        const first = signRecoveryReset(user, [a.device.deviceId], 1, a.recovery, T0 + 3);
        expect((await store().applyRecoveryReset(first, undefined, T0 + 3, LIMITS)).ok).toBe(true);
        expect((await store().getRecovery(user))?.reset).toEqual(first);
        // The phone is live again and the thief's revocation no longer kept for it — only for the
        // laptop, which it took with it by cascade and the reset did not keep.
        expect(await store().revocationRecords(a.device.deviceId)).toEqual({});
        expect(await store().revocationRecords(laptop.deviceId)).toEqual({ revocation: byThief, reset: first });
        expect(await store().revocationRecords(thief.deviceId)).toEqual({ reset: first });
        expect(await store().listRevocations(user, 10)).toEqual([byThief]);

        // A device linked after the reset and then revoked stands on its revocation alone.
        const later = await link(a, a.device, T0 + 4);
        const revocation = signRevocation(user, later.deviceId, a.device, T0 + 5);
        expect((await store().revokeDevice(revocation, T0 + 5)).ok).toBe(true);
        expect(await store().revocationRecords(later.deviceId)).toEqual({ revocation });

        // The next reset replaces the first and stands behind every device it did not keep.
        const second = signRecoveryReset(user, [a.device.deviceId, laptop.deviceId], 2, a.recovery, T0 + 6);
        expect((await store().applyRecoveryReset(second, undefined, T0 + 6, LIMITS)).ok).toBe(true);
        expect((await store().getRecovery(user))?.reset).toEqual(second);
        expect(await store().revocationRecords(laptop.deviceId)).toEqual({});
        expect(await store().revocationRecords(thief.deviceId)).toEqual({ reset: second });
        expect(await store().revocationRecords(later.deviceId)).toEqual({ revocation, reset: second });
        expect(await store().listRevocations(user, 10)).toEqual([revocation]);
        // A refused reset (a replay) changes no record.
        expect((await store().applyRecoveryReset(first, undefined, T0 + 7, LIMITS)).ok).toBe(false);
        expect((await store().getRecovery(user))?.reset).toEqual(second);
      });

      it('keeps revocation records and the latest reset across close and reopen', async (ctx) => {
        const reopen = harness?.reopen;
        if (!reopen) {
          ctx.skip();
          return;
        }
        const a = await registerRecovering();
        const laptop = await link(a, a.device);
        const thief = await link(a, a.device);
        const orphan = await link(a, thief);
        const user = a.keys.userId;
        const revocation = signRevocation(user, thief.deviceId, laptop, T0 + 2);
        expect((await store().revokeDevice(revocation, T0 + 2)).ok).toBe(true);
        const reset = signRecoveryReset(user, [a.device.deviceId, thief.deviceId], 1, a.recovery, T0 + 3);
        expect((await store().applyRecoveryReset(reset, undefined, T0 + 3, LIMITS)).ok).toBe(true);

        const first = store();
        live = undefined;
        await first.close();
        live = await reopen();
        expect((await store().getRecovery(user))?.reset).toEqual(reset);
        // The thief was kept (its record dropped); the orphan it took with it was not.
        expect(await store().revocationRecords(thief.deviceId)).toEqual({});
        expect(await store().revocationRecords(orphan.deviceId)).toEqual({ revocation, reset });
        expect(await store().revocationRecords(laptop.deviceId)).toEqual({ reset });
        expect(await store().listRevocations(user, 10)).toEqual([revocation]);
      });

      it('keeps recovery keys, generations, escrows and vouches across close and reopen', async (ctx) => {
        const reopen = harness?.reopen;
        if (!reopen) {
          ctx.skip();
          return;
        }
        const a = await registerRecovering();
        const laptop = await link(a, a.device);
        const vouch = certifyDevice(a.keys, a.device, laptop.publicKey, T0 + 2);
        expect((await store().putVouch(vouch, T0 + 2, 32)).ok).toBe(true);
        expect((await store().applyRecoveryReset(signRecoveryReset(a.keys.userId, [a.device.deviceId, laptop.deviceId], 1, a.recovery, T0), undefined, T0 + 3, LIMITS)).ok).toBe(true);
        const before = await store().getRecovery(a.keys.userId);

        const first = store();
        live = undefined;
        await first.close();
        live = await reopen();
        expect(await store().getRecovery(a.keys.userId)).toEqual(before);
        expect(before?.gen).toBe(1);
        expect(await store().listVouches(a.keys.userId)).toEqual([vouch]);
        const replay = await store().applyRecoveryReset(signRecoveryReset(a.keys.userId, [a.device.deviceId], 1, a.recovery, T0), undefined, T0 + 4, LIMITS);
        expect(replay.ok ? 'applied' : replay.error.code).toBe(ErrorCode.RECOVERY_REPLAYED);
      });
    });

    describe('append', () => {
      it('numbers each document 1, 2, 3… independently and across authors', async () => {
        const a = await registered();
        const laptop = generateDeviceKeys();
        const cert = certifyDevice(a.keys, a.device, laptop.publicKey, T0);
        expect((await store().registerDevice(cert, laptop.publicKey, a.keys.userPublicKey, T0, LIMITS)).ok).toBe(true);
        const journal = docOf(a, 'journal');
        const plan = docOf(a, 'plan');

        expect(summarize(await store().append([request(a.keys, seal(a.keys, a.device, journal, 1))], T0))).toEqual(['stored:1']);
        expect(summarize(await store().append([request(a.keys, seal(a.keys, a.device, plan, 1))], T0))).toEqual(['stored:1']);
        const outcomes = await store().append(
          [
            request(a.keys, seal(a.keys, laptop, journal, 1)),
            request(a.keys, seal(a.keys, a.device, journal, 2)),
            request(a.keys, seal(a.keys, a.device, plan, 2)),
          ],
          T0,
        );
        expect(summarize(outcomes)).toEqual(['stored:2', 'stored:3', 'stored:2']);
        expect(await store().headSeq(a.keys.userId, journal)).toBe(3);
        expect(await store().headSeq(a.keys.userId, plan)).toBe(2);
        expect(await store().append([], T0)).toEqual([]);
      });

      it('requires each counter to be the author’s last + 1 (COUNTER_GAP otherwise)', async () => {
        const a = await registered();
        const doc = docOf(a);
        const c = [1, 2, 3, 4].map((n) => seal(a.keys, a.device, doc, n));

        // A gap on a fresh document neither stores nor claims the document.
        expect(summarize(await store().append([request(a.keys, c[1]!)], T0))).toEqual([`rejected:${ErrorCode.COUNTER_GAP}`]);
        expect(await store().headSeq(a.keys.userId, doc)).toBe(0);

        expect(summarize(await store().append([request(a.keys, c[0]!)], T0))).toEqual(['stored:1']);
        expect(summarize(await store().append([request(a.keys, c[2]!)], T0))).toEqual([`rejected:${ErrorCode.COUNTER_GAP}`]);
        expect(await store().headSeq(a.keys.userId, doc)).toBe(1);
        // The refused counters are still free once the gap is filled.
        const outcomes = await store().append([c[1]!, c[2]!, c[3]!].map((env) => request(a.keys, env)), T0);
        expect(summarize(outcomes)).toEqual(['stored:2', 'stored:3', 'stored:4']);
      });

      it('refuses a used counter with a different signature (COUNTER_REUSED) and keeps the original', async () => {
        const a = await registered();
        const doc = docOf(a);
        const original = [1, 2].map((n) => seal(a.keys, a.device, doc, n, `original ${n}`));
        await store().append(original.map((env) => request(a.keys, env)), T0);

        const forks = [seal(a.keys, a.device, doc, 1, 'forked 1'), seal(a.keys, a.device, doc, 2, 'forked 2')];
        const outcomes = await store().append(forks.map((env) => request(a.keys, env)), T0);
        expect(summarize(outcomes)).toEqual([`rejected:${ErrorCode.COUNTER_REUSED}`, `rejected:${ErrorCode.COUNTER_REUSED}`]);
        expect((await store().readLog(a.keys.userId, doc, asSeq(0), 10)).map((e) => e.env)).toEqual(original);
      });

      it('answers the identical envelope again with "duplicate" and its original seq', async () => {
        const a = await registered();
        const doc = docOf(a);
        const envs = [1, 2, 3].map((n) => seal(a.keys, a.device, doc, n));
        await store().append(envs.map((env) => request(a.keys, env)), T0);

        const again = await store().append([request(a.keys, envs[1]!), request(a.keys, envs[0]!), request(a.keys, envs[2]!)], T0 + 1);
        expect(summarize(again)).toEqual(['duplicate:2', 'duplicate:1', 'duplicate:3']);
        // Within one batch too: the second copy sees the first.
        const next = seal(a.keys, a.device, doc, 4);
        expect(summarize(await store().append([request(a.keys, next), request(a.keys, next)], T0 + 2))).toEqual([
          'stored:4',
          'duplicate:4',
        ]);
        expect(await store().headSeq(a.keys.userId, doc)).toBe(4);
        expect((await store().readLog(a.keys.userId, doc, asSeq(0), 10)).map((e) => e.env)).toEqual([...envs, next]);
      });

      it('keeps documents in per-user namespaces: the same id in two users is two documents, neither can squat the other', async () => {
        const a = await registered();
        const b = await registered();
        const doc = docOf(a);
        const mine = seal(a.keys, a.device, doc, 1);
        // B writes first to the id A will use (it may know it: a revoked device of A's becomes B).
        const squat = seal(b.keys, b.device, doc, 1, 'squatter');
        expect(summarize(await store().append([request(b.keys, squat)], T0))).toEqual(['stored:1']);
        // A's own document is untouched by that, and A's first write is its seq 1.
        expect(await store().headSeq(a.keys.userId, doc)).toBe(0);
        expect(summarize(await store().append([request(a.keys, mine)], T0))).toEqual(['stored:1']);
        expect((await store().readLog(a.keys.userId, doc, asSeq(0), 10)).map((e) => e.env)).toEqual([mine]);
        expect((await store().readLog(b.keys.userId, doc, asSeq(0), 10)).map((e) => e.env)).toEqual([squat]);
        expect(await store().lastCounter(a.keys.userId, doc, a.device.deviceId)).toBe(1);
        expect(await store().lastCounter(a.keys.userId, doc, b.device.deviceId)).toBe(0);
        expect(await store().lastCounter(b.keys.userId, doc, b.device.deviceId)).toBe(1);
        // An id nobody wrote reads like any empty document.
        expect(await store().headSeq(a.keys.userId, docOf(b))).toBe(0);
        expect(await store().readLog(a.keys.userId, docOf(b), asSeq(0), 10)).toEqual([]);
      });

      it('keeps the good requests of a batch with mixed outcomes', async () => {
        const a = await registered();
        const b = await registered();
        const doc = docOf(a);
        const c1 = seal(a.keys, a.device, doc, 1);
        const c2 = seal(a.keys, a.device, doc, 2);
        const c3 = seal(a.keys, a.device, doc, 3);
        const fork1 = seal(a.keys, a.device, doc, 1, 'fork');
        const foreign = seal(b.keys, b.device, doc, 1);
        const bDoc = docOf(b);
        const bOwn = seal(b.keys, b.device, bDoc, 1);

        const outcomes = await store().append(
          [
            request(a.keys, c1),
            request(a.keys, c3),
            request(a.keys, c2),
            request(b.keys, foreign),
            request(a.keys, fork1),
            request(b.keys, bOwn),
            request(a.keys, c2),
            request(a.keys, c3),
          ],
          T0,
        );
        expect(summarize(outcomes)).toEqual([
          'stored:1',
          `rejected:${ErrorCode.COUNTER_GAP}`,
          'stored:2',
          // B's envelope for the same id lands in B's namespace.
          'stored:1',
          `rejected:${ErrorCode.COUNTER_REUSED}`,
          'stored:1',
          'duplicate:2',
          'stored:3',
        ]);
        expect((await store().readLog(a.keys.userId, doc, asSeq(0), 10)).map((e) => e.env)).toEqual([c1, c2, c3]);
        expect((await store().readLog(b.keys.userId, doc, asSeq(0), 10)).map((e) => e.env)).toEqual([foreign]);
        expect((await store().readLog(b.keys.userId, bDoc, asSeq(0), 10)).map((e) => e.env)).toEqual([bOwn]);
      });
    });

    describe('readLog and headSeq', () => {
      it('returns the exact envelopes in seq order after a given seq, at most `limit`', async () => {
        const a = await registered();
        const doc = docOf(a);
        const other = docOf(a, 'other');
        const envs = Array.from({ length: 7 }, (_, i) => seal(a.keys, a.device, doc, i + 1, `entry ${i + 1}`, (i % 10) + 1));
        // Three commits at three times; another document interleaved.
        await store().append(envs.slice(0, 2).map((env) => request(a.keys, env)), T0 + 1);
        await store().append([request(a.keys, seal(a.keys, a.device, other, 1))], T0 + 2);
        await store().append(envs.slice(2, 5).map((env) => request(a.keys, env)), T0 + 3);
        await store().append(envs.slice(5).map((env) => request(a.keys, env)), T0 + 4);

        const all = await store().readLog(a.keys.userId, doc, asSeq(0), 100);
        expect(all.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
        expect(all.map((e) => e.env)).toStrictEqual(envs);
        expect(all.map((e) => e.receivedAt)).toEqual([T0 + 1, T0 + 1, T0 + 3, T0 + 3, T0 + 3, T0 + 4, T0 + 4]);

        const middle = await store().readLog(a.keys.userId, doc, asSeq(3), 2);
        expect(middle.map((e) => e.seq)).toEqual([4, 5]);
        expect(middle.map((e) => e.env)).toStrictEqual(envs.slice(3, 5));

        // Paging by the last seq seen visits every entry once, in order.
        const pages: number[][] = [];
        let after = asSeq(0);
        for (;;) {
          const page = await store().readLog(a.keys.userId, doc, after, 3);
          if (page.length === 0) break;
          pages.push(page.map((e) => e.seq));
          after = page[page.length - 1]!.seq;
        }
        expect(pages).toEqual([[1, 2, 3], [4, 5, 6], [7]]);

        expect(await store().readLog(a.keys.userId, doc, asSeq(7), 10)).toEqual([]);
        expect(await store().readLog(a.keys.userId, docOf(a, 'never written'), asSeq(0), 10)).toEqual([]);
        expect((await store().readLog(a.keys.userId, other, asSeq(0), 10)).map((e) => e.seq)).toEqual([1]);
      });

      it('returns every signed field exactly as stored, the part index and count of a split update included', async () => {
        const a = await registered();
        const doc = docOf(a);
        const key = deriveDocKey(deriveEpochZeroSecret(a.keys.rootKey), doc, 0);
        const parts = [0, 1, 2].map((index) =>
          sealEnvelope({ doc, kind: 'update', epoch: 0, device: a.device.deviceId, counter: index + 1, lane: 4, part: { index, count: 3 } }, encoder.encode(`part ${index}`), {
            key,
            signingKey: a.device.secretKey,
          }),
        );
        await store().append(parts.map((env) => request(a.keys, env)), T0);
        expect((await store().readLog(a.keys.userId, doc, asSeq(0), 10)).map((e) => e.env)).toStrictEqual(parts);
        // And a whole update has no part field at all.
        const whole = seal(a.keys, a.device, doc, 4);
        await store().append([request(a.keys, whole)], T0);
        expect((await store().readLog(a.keys.userId, doc, asSeq(3), 10))[0]!.env).toStrictEqual(whole);
      });

      it('reports the head seq, unmoved by rejections and duplicates', async () => {
        const a = await registered();
        const doc = docOf(a);
        expect(await store().headSeq(a.keys.userId, doc)).toBe(0);
        const envs = [1, 2].map((n) => seal(a.keys, a.device, doc, n));
        await store().append(envs.map((env) => request(a.keys, env)), T0);
        expect(await store().headSeq(a.keys.userId, doc)).toBe(2);

        await store().append([request(a.keys, envs[0]!), request(a.keys, seal(a.keys, a.device, doc, 5))], T0);
        expect(await store().headSeq(a.keys.userId, doc)).toBe(2);
        await expect(store().ping()).resolves.toBeUndefined();
      });
    });

    describe('payments, grace periods and audit', () => {
      const subscription = (userId: SubscriptionRecord['userId'], over: Partial<SubscriptionRecord> = {}): SubscriptionRecord => ({
        subscriptionId: 'sub_1',
        userId,
        priceId: 'price_premium',
        tier: 'premium',
        status: 'active',
        eventAt: T0,
        updatedAt: T0 + 1,
        ...over,
      });
      const draft = (op: string, userId: AuditDraft['userId'] = null, detail: AuditDraft['detail'] = {}): AuditDraft => ({
        actor: 'webhook',
        op,
        userId,
        outcome: 'applied',
        detail,
      });

      it('applies a payment event once: a second write with the same event id fails and writes nothing', async () => {
        const user = newAccount().keys.userId;
        const event = { id: 'evt_1', type: 'customer.subscription.created', outcome: 'tier_changed' };
        expect(await store().paymentEventSeen('evt_1')).toBe(false);
        await store().commitPayment({ event, subscription: subscription(user), audit: [draft('payment.event', user)] }, T0);
        expect(await store().paymentEventSeen('evt_1')).toBe(true);

        const again = store().commitPayment(
          { event, subscription: subscription(user, { status: 'canceled', eventAt: T0 + 5 }), audit: [draft('payment.event', user)] },
          T0 + 5,
        );
        await expect(again).rejects.toThrow();
        expect((await store().getSubscription('sub_1'))?.status).toBe('active');
        expect(await store().readAudit(0, 10)).toHaveLength(1);
        // With a tier change too: nothing of the duplicate lands.
        await expect(store().setEntitlement(user, 'trial', T0 + 6, 'webhook', { event })).rejects.toThrow();
        expect(await store().getEntitlement(user)).toBeUndefined();
      });

      it('keeps subscriptions by id, updated in place and listed per user', async () => {
        const a = newAccount().keys.userId;
        const b = newAccount().keys.userId;
        expect(await store().getSubscription('sub_1')).toBeUndefined();
        await store().commitPayment({ subscription: subscription(a) }, T0);
        await store().commitPayment({ subscription: subscription(a, { subscriptionId: 'sub_0', priceId: null, tier: null }) }, T0);
        await store().commitPayment({ subscription: subscription(b, { subscriptionId: 'sub_2' }) }, T0);
        const updated = subscription(a, { status: 'past_due', eventAt: T0 + 60_000, updatedAt: T0 + 60_001 });
        await store().commitPayment({ subscription: updated }, T0 + 60_001);

        expect(await store().getSubscription('sub_1')).toEqual(updated);
        expect((await store().listSubscriptions(a)).map((s) => [s.subscriptionId, s.tier])).toEqual([
          ['sub_0', null],
          ['sub_1', 'premium'],
        ]);
        expect(await store().listSubscriptions(b)).toEqual([subscription(b, { subscriptionId: 'sub_2' })]);
        expect(await store().listSubscriptions(newAccount().keys.userId)).toEqual([]);
      });

      it('opens, lists (earliest end first) and closes grace periods', async () => {
        const a = newAccount().keys.userId;
        const b = newAccount().keys.userId;
        const graceA: GraceRecord = { userId: a, paidTier: 'premium', startedAt: T0, endsAt: T0 + 14_000, failures: 1 };
        const graceB: GraceRecord = { userId: b, paidTier: 'basic', startedAt: T0, endsAt: T0 + 7_000, failures: 2 };
        await store().commitPayment({ grace: { set: graceA } }, T0);
        await store().commitPayment({ grace: { set: graceB }, failure: { userId: b, at: T0 } }, T0);
        expect(await store().getGrace(a)).toEqual(graceA);
        expect(await store().listGraces()).toEqual([graceB, graceA]);

        await store().commitPayment({ grace: { clear: b } }, T0 + 1);
        expect(await store().getGrace(b)).toBeUndefined();
        expect(await store().listGraces()).toEqual([graceA]);
        // Clearing what is not there is harmless.
        await store().commitPayment({ grace: { clear: b } }, T0 + 2);
      });

      it('counts payment failures at or after a time, per user', async () => {
        const a = newAccount().keys.userId;
        const b = newAccount().keys.userId;
        for (const at of [T0, T0 + 10, T0 + 20]) await store().commitPayment({ failure: { userId: a, at } }, at);
        await store().commitPayment({ failure: { userId: b, at: T0 + 20 } }, T0 + 20);
        expect(await store().countPaymentFailures(a, T0)).toBe(3);
        expect(await store().countPaymentFailures(a, T0 + 10)).toBe(2);
        expect(await store().countPaymentFailures(a, T0 + 21)).toBe(0);
        expect(await store().countPaymentFailures(b, 0)).toBe(1);
      });

      it('forgets failures outside the window when a new one is recorded, for that user only', async () => {
        const a = newAccount().keys.userId;
        const b = newAccount().keys.userId;
        await store().commitPayment({ failure: { userId: a, at: T0 } }, T0);
        await store().commitPayment({ failure: { userId: b, at: T0 } }, T0);
        await store().commitPayment({ failure: { userId: a, at: T0 + 100, forgetBefore: T0 + 50 } }, T0 + 100);
        expect(await store().countPaymentFailures(a, 0)).toBe(1);
        expect(await store().countPaymentFailures(b, 0)).toBe(1);
      });

      it('writes an entitlement and its payment bookkeeping together', async () => {
        const a = newAccount().keys.userId;
        const grace: GraceRecord = { userId: a, paidTier: 'premium', startedAt: T0, endsAt: T0 + 1000, failures: 1 };
        const record = await store().setEntitlement(a, 'grace_period', T0, 'webhook', {
          event: { id: 'evt_fail', type: 'invoice.payment_failed', outcome: 'grace_started' },
          grace: { set: grace },
          failure: { userId: a, at: T0 },
          audit: [draft('payment.event', a), draft('tier.set', a, { from: 'premium', to: 'grace_period' })],
        });
        expect(record).toEqual({ userId: a, tier: 'grace_period', updatedAt: T0, source: 'webhook' });
        expect(await store().getEntitlement(a)).toEqual(record);
        expect(await store().getGrace(a)).toEqual(grace);
        expect(await store().countPaymentFailures(a, 0)).toBe(1);
        expect(await store().paymentEventSeen('evt_fail')).toBe(true);
        expect((await store().readAudit(0, 10)).map((r) => r.op)).toEqual(['payment.event', 'tier.set']);
        // Without bookkeeping it is the plain setter it always was.
        expect(await store().setEntitlement(a, 'trial', T0 + 1, 'grace-expiry')).toEqual({ userId: a, tier: 'trial', updatedAt: T0 + 1, source: 'grace-expiry' });
      });

      it('numbers audit rows from 1 and chains each to the one before', async () => {
        const a = newAccount().keys.userId;
        expect(await store().readAudit(0, 10)).toEqual([]);
        expect(await store().appendAudit([], T0)).toEqual([]);
        const first = await store().appendAudit([draft('payment.event', null, { event: 'evt_1', b: 2, a: 'x' })], T0);
        const more = await store().appendAudit([draft('tier.set', a, { from: 'trial', to: 'premium' }), draft('grace.start', a, { endsAt: T0 + 5 })], T0 + 1);
        expect(first.map((r) => r.seq)).toEqual([1]);
        expect(more.map((r) => r.seq)).toEqual([2, 3]);
        expect(first[0]!.prevHash).toBe(GENESIS_HASH);
        expect(more[0]!.prevHash).toBe(first[0]!.hash);
        expect(more[1]!.prevHash).toBe(more[0]!.hash);
        // Canonical detail: sorted keys, so equal details hash equally.
        expect(first[0]!.detail).toBe('{"a":"x","b":2,"event":"evt_1"}');
        expect(first[0]).toMatchObject({ at: T0, actor: 'webhook', op: 'payment.event', userId: null, outcome: 'applied' });

        const all = await store().readAudit(0, 10);
        expect(all).toEqual([...first, ...more]);
        expect(await store().readAudit(1, 1)).toEqual([more[0]]);
        expect(verifyAuditRows(all)).toEqual({ ok: true, count: 3, headHash: more[1]!.hash });
      });

      it('keeps payment state and the audit chain across close and reopen', async (ctx) => {
        const reopen = harness?.reopen;
        if (!reopen) {
          ctx.skip();
          return;
        }
        const a = newAccount().keys.userId;
        const grace: GraceRecord = { userId: a, paidTier: 'basic', startedAt: T0, endsAt: T0 + 1000, failures: 1 };
        await store().setEntitlement(a, 'grace_period', T0, 'webhook', {
          event: { id: 'evt_9', type: 'invoice.payment_failed', outcome: 'grace_started' },
          subscription: subscription(a, { tier: 'basic', priceId: 'price_basic', status: 'past_due' }),
          grace: { set: grace },
          failure: { userId: a, at: T0 },
          audit: [draft('payment.event', a)],
        });
        const auditBefore = await store().readAudit(0, 10);

        const first = store();
        live = undefined;
        await first.close();
        live = await reopen();

        expect(await store().paymentEventSeen('evt_9')).toBe(true);
        expect(await store().getGrace(a)).toEqual(grace);
        expect(await store().listGraces()).toEqual([grace]);
        expect((await store().getSubscription('sub_1'))?.status).toBe('past_due');
        expect(await store().countPaymentFailures(a, 0)).toBe(1);
        expect(await store().readAudit(0, 10)).toEqual(auditBefore);
        const next = await store().appendAudit([draft('grace.end', a)], T0 + 2);
        expect(next[0]).toMatchObject({ seq: 2, prevHash: auditBefore[0]!.hash });
        expect(verifyAuditRows(await store().readAudit(0, 10)).ok).toBe(true);
      });
    });

    it('keeps users, devices, logs and counters across close and reopen', async (ctx) => {
      const reopen = harness?.reopen;
      if (!reopen) {
        ctx.skip();
        return;
      }
      const a = await registered();
      const phone = generateDeviceKeys();
      const phoneCert = certifyDevice(a.keys, a.device, phone.publicKey, T0);
      expect((await store().registerDevice(phoneCert, phone.publicKey, a.keys.userPublicKey, T0 + 1, LIMITS)).ok).toBe(true);
      const doc = docOf(a);
      const envs = [1, 2].map((n) => seal(a.keys, a.device, doc, n));
      await store().append(envs.map((env) => request(a.keys, env)), T0 + 2);
      const devicesBefore = byDeviceId(await store().listDevices(a.keys.userId));
      const logBefore = await store().readLog(a.keys.userId, doc, asSeq(0), 10);

      const first = store();
      live = undefined;
      await first.close();
      live = await reopen();

      expect(byDeviceId(await store().listDevices(a.keys.userId))).toEqual(devicesBefore);
      expect(await store().getDevice(phone.deviceId)).toEqual(devicesBefore.find((d) => d.deviceId === phone.deviceId));
      expect(await store().headSeq(a.keys.userId, doc)).toBe(2);
      expect(await store().readLog(a.keys.userId, doc, asSeq(0), 10)).toStrictEqual(logBefore);

      // The user still exists: a second user-key certificate is still refused.
      const late = generateDeviceKeys();
      const lateCert = certifyFirstDevice(a.keys, late, T0 + 3);
      const refused = await store().registerDevice(lateCert, late.publicKey, a.keys.userPublicKey, T0 + 3, LIMITS);
      expect(refused.ok ? 'registered' : refused.error.code).toBe(ErrorCode.BAD_CERTIFICATE);

      // Counters survived: a replay is a duplicate, a skip is a gap, the next one is seq 3.
      const outcomes = await store().append(
        [
          request(a.keys, envs[1]!),
          request(a.keys, seal(a.keys, a.device, doc, 4)),
          request(a.keys, seal(a.keys, a.device, doc, 3)),
        ],
        T0 + 4,
      );
      expect(summarize(outcomes)).toEqual(['duplicate:2', `rejected:${ErrorCode.COUNTER_GAP}`, 'stored:3']);
    });

    describe('relay id', () => {
      it('keeps the first candidate and returns it for every later one, across close and reopen', async () => {
        const [first, racing] = await Promise.all([store().relayId('keel-first'), store().relayId('keel-racing')]);
        expect(first).toBe(racing);
        expect(['keel-first', 'keel-racing']).toContain(first);
        expect(await store().relayId('keel-later')).toBe(first);

        const reopen = harness?.reopen;
        if (!reopen) return;
        const closing = store();
        live = undefined;
        await closing.close();
        live = await reopen();
        expect(await store().relayId('keel-after-restart')).toBe(first);
      });
    });
  });
};
