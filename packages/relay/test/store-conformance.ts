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
