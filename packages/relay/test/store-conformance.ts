import {
  type DeviceCertificate,
  type DeviceKeys,
  type DocId,
  type Envelope,
  ErrorCode,
  type UserKeys,
  asSeq,
  certifyDevice,
  certifyFirstDevice,
  cryptoReady,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  deriveUserKeys,
  generateDeviceKeys,
  generateRootKey,
  sealEnvelope,
} from '@keel/engine';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { AppendOutcome, AppendRequest, RelayStore } from '../src/storage/relay-store.js';

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
      const result = await store().registerDevice(account.cert, account.device.publicKey, account.keys.userPublicKey, T0);
      expect(result.ok).toBe(true);
      return account;
    };

    const docOf = (account: Account, docName = 'journal'): DocId => deriveDocId(account.keys.docIdKey, 'mood', docName);

    describe('devices', () => {
      it('registers the first device of a new user, certified by the user key, and creates the user', async () => {
        const a = newAccount();
        expect(await store().getDevice(a.device.deviceId)).toBeUndefined();
        expect(await store().listDevices(a.keys.userId)).toEqual([]);

        const result = await store().registerDevice(a.cert, a.device.publicKey, a.keys.userPublicKey, T0 + 5);
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

        const result = await store().registerDevice(cert, intruder.publicKey, a.keys.userPublicKey, T0 + 1);
        expect(result.ok ? 'registered' : result.error.code).toBe(ErrorCode.BAD_CERTIFICATE);
        expect(await store().getDevice(intruder.deviceId)).toBeUndefined();
        expect((await store().listDevices(a.keys.userId)).map((d) => d.deviceId)).toEqual([a.device.deviceId]);
      });

      it('refuses a device-issued certificate for a user it has never seen (BAD_CERTIFICATE)', async () => {
        const stranger = newAccount();
        const second = generateDeviceKeys();
        const cert = certifyDevice(stranger.keys, stranger.device, second.publicKey, T0);

        const result = await store().registerDevice(cert, second.publicKey, stranger.keys.userPublicKey, T0);
        expect(result.ok ? 'registered' : result.error.code).toBe(ErrorCode.BAD_CERTIFICATE);
        expect(await store().getDevice(second.deviceId)).toBeUndefined();
        expect(await store().listDevices(stranger.keys.userId)).toEqual([]);
      });

      it('registers a device certified by an existing device of the same user', async () => {
        const a = await registered();
        const phone = generateDeviceKeys();
        const cert = certifyDevice(a.keys, a.device, phone.publicKey, T0 + 10);

        const result = await store().registerDevice(cert, phone.publicKey, a.keys.userPublicKey, T0 + 20);
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
        const first = await store().registerDevice(a.cert, a.device.publicKey, a.keys.userPublicKey, T0);
        const again = await store().registerDevice(a.cert, a.device.publicKey, a.keys.userPublicKey, T0 + 1000);
        expect(first.ok).toBe(true);
        expect(again).toEqual(first);

        const phone = generateDeviceKeys();
        const cert = certifyDevice(a.keys, a.device, phone.publicKey, T0);
        const second = await store().registerDevice(cert, phone.publicKey, a.keys.userPublicKey, T0 + 1);
        const secondAgain = await store().registerDevice(cert, phone.publicKey, a.keys.userPublicKey, T0 + 2000);
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

        const result = await store().registerDevice(cert, a.device.publicKey, other.userPublicKey, T0 + 1);
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
          expect((await store().registerDevice(cert, device.publicKey, a.keys.userPublicKey, T0 + i)).ok).toBe(true);
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

    describe('append', () => {
      it('numbers each document 1, 2, 3… independently and across authors', async () => {
        const a = await registered();
        const laptop = generateDeviceKeys();
        const cert = certifyDevice(a.keys, a.device, laptop.publicKey, T0);
        expect((await store().registerDevice(cert, laptop.publicKey, a.keys.userPublicKey, T0)).ok).toBe(true);
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
        expect(await store().headSeq(journal)).toBe(3);
        expect(await store().headSeq(plan)).toBe(2);
        expect(await store().docOwner(journal)).toBe(a.keys.userId);
        expect(await store().append([], T0)).toEqual([]);
      });

      it('requires each counter to be the author’s last + 1 (COUNTER_GAP otherwise)', async () => {
        const a = await registered();
        const doc = docOf(a);
        const c = [1, 2, 3, 4].map((n) => seal(a.keys, a.device, doc, n));

        // A gap on a fresh document neither stores nor claims the document.
        expect(summarize(await store().append([request(a.keys, c[1]!)], T0))).toEqual([`rejected:${ErrorCode.COUNTER_GAP}`]);
        expect(await store().headSeq(doc)).toBe(0);
        expect(await store().docOwner(doc)).toBeUndefined();

        expect(summarize(await store().append([request(a.keys, c[0]!)], T0))).toEqual(['stored:1']);
        expect(summarize(await store().append([request(a.keys, c[2]!)], T0))).toEqual([`rejected:${ErrorCode.COUNTER_GAP}`]);
        expect(await store().headSeq(doc)).toBe(1);
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
        expect((await store().readLog(doc, asSeq(0), 10)).map((e) => e.env)).toEqual(original);
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
        expect(await store().headSeq(doc)).toBe(4);
        expect((await store().readLog(doc, asSeq(0), 10)).map((e) => e.env)).toEqual([...envs, next]);
      });

      it("refuses another user's appends to an owned document (NOT_AUTHORIZED)", async () => {
        const a = await registered();
        const b = await registered();
        const doc = docOf(a);
        const mine = seal(a.keys, a.device, doc, 1);
        await store().append([request(a.keys, mine)], T0);

        // B signs with its own device and key, but names A's document.
        const outcomes = await store().append([request(b.keys, seal(b.keys, b.device, doc, 1))], T0);
        expect(summarize(outcomes)).toEqual([`rejected:${ErrorCode.NOT_AUTHORIZED}`]);
        expect(await store().docOwner(doc)).toBe(a.keys.userId);
        expect(await store().headSeq(doc)).toBe(1);
        expect((await store().readLog(doc, asSeq(0), 10)).map((e) => e.env)).toEqual([mine]);
        expect(await store().docOwner(docOf(b))).toBeUndefined();
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
          `rejected:${ErrorCode.NOT_AUTHORIZED}`,
          `rejected:${ErrorCode.COUNTER_REUSED}`,
          'stored:1',
          'duplicate:2',
          'stored:3',
        ]);
        expect((await store().readLog(doc, asSeq(0), 10)).map((e) => e.env)).toEqual([c1, c2, c3]);
        expect((await store().readLog(bDoc, asSeq(0), 10)).map((e) => e.env)).toEqual([bOwn]);
        expect(await store().docOwner(bDoc)).toBe(b.keys.userId);
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

        const all = await store().readLog(doc, asSeq(0), 100);
        expect(all.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
        expect(all.map((e) => e.env)).toStrictEqual(envs);
        expect(all.map((e) => e.receivedAt)).toEqual([T0 + 1, T0 + 1, T0 + 3, T0 + 3, T0 + 3, T0 + 4, T0 + 4]);

        const middle = await store().readLog(doc, asSeq(3), 2);
        expect(middle.map((e) => e.seq)).toEqual([4, 5]);
        expect(middle.map((e) => e.env)).toStrictEqual(envs.slice(3, 5));

        // Paging by the last seq seen visits every entry once, in order.
        const pages: number[][] = [];
        let after = asSeq(0);
        for (;;) {
          const page = await store().readLog(doc, after, 3);
          if (page.length === 0) break;
          pages.push(page.map((e) => e.seq));
          after = page[page.length - 1]!.seq;
        }
        expect(pages).toEqual([[1, 2, 3], [4, 5, 6], [7]]);

        expect(await store().readLog(doc, asSeq(7), 10)).toEqual([]);
        expect(await store().readLog(docOf(a, 'never written'), asSeq(0), 10)).toEqual([]);
        expect((await store().readLog(other, asSeq(0), 10)).map((e) => e.seq)).toEqual([1]);
      });

      it('reports the head seq, unmoved by rejections and duplicates', async () => {
        const a = await registered();
        const doc = docOf(a);
        expect(await store().headSeq(doc)).toBe(0);
        const envs = [1, 2].map((n) => seal(a.keys, a.device, doc, n));
        await store().append(envs.map((env) => request(a.keys, env)), T0);
        expect(await store().headSeq(doc)).toBe(2);

        await store().append([request(a.keys, envs[0]!), request(a.keys, seal(a.keys, a.device, doc, 5))], T0);
        expect(await store().headSeq(doc)).toBe(2);
        await expect(store().ping()).resolves.toBeUndefined();
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
      expect((await store().registerDevice(phoneCert, phone.publicKey, a.keys.userPublicKey, T0 + 1)).ok).toBe(true);
      const doc = docOf(a);
      const envs = [1, 2].map((n) => seal(a.keys, a.device, doc, n));
      await store().append(envs.map((env) => request(a.keys, env)), T0 + 2);
      const devicesBefore = byDeviceId(await store().listDevices(a.keys.userId));
      const logBefore = await store().readLog(doc, asSeq(0), 10);

      const first = store();
      live = undefined;
      await first.close();
      live = await reopen();

      expect(byDeviceId(await store().listDevices(a.keys.userId))).toEqual(devicesBefore);
      expect(await store().getDevice(phone.deviceId)).toEqual(devicesBefore.find((d) => d.deviceId === phone.deviceId));
      expect(await store().docOwner(doc)).toBe(a.keys.userId);
      expect(await store().headSeq(doc)).toBe(2);
      expect(await store().readLog(doc, asSeq(0), 10)).toStrictEqual(logBefore);

      // The user still exists: a second user-key certificate is still refused.
      const late = generateDeviceKeys();
      const lateCert = certifyFirstDevice(a.keys, late, T0 + 3);
      const refused = await store().registerDevice(lateCert, late.publicKey, a.keys.userPublicKey, T0 + 3);
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
  });
};
