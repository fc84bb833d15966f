import {
  type Identity,
  RecoveryError,
  createIdentity,
  joinWithPairingCode,
  parseIdentity,
  recoverDevice,
  recoverThisDevice,
  serializeIdentity,
} from '@keel/client';
import {
  CloseCode,
  type Envelope,
  type EpochRecord,
  EpochRecordSchema,
  ErrorCode,
  PROTOCOL_VERSION,
  certifyFirstDevice,
  cryptoReady,
  decryptEnvelope,
  deriveDocKey,
  deriveEpochZeroSecret,
  deriveRecoveryKeys,
  generateDeviceKeys,
  openEpochRecord,
  parseRecoveryPhrase,
  signChallenge,
  signRecoveryReset,
} from '@keel/engine';
import Database from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import * as Y from 'yjs';
import { startCrisisProbe } from '../support/crisis-probe.js';
import { type Device, waitFor } from '../support/devices.js';
import { lastStoredEnvelope, openRawSocket } from '../support/raw-device.js';
import type { RelayProcess } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();
beforeAll(async () => {
  await cryptoReady();
});

const PLAN = { class: 'safety_plan', name: 'main' } as const;
const MOOD = { class: 'mood', name: 'log' } as const;

/** Resolves with the code of the first final error a client reports (its relay cut it off). */
const cutOff = (d: Device): Promise<string> => new Promise((resolve) => d.client.on('error', (e) => e.final && resolve(e.code)));

/** Links a new device to `issuer`'s user with a pairing code, as a person would. */
const pair = async (relay: RelayProcess, issuer: Device): Promise<Identity> => {
  const { code, linked } = await issuer.client.startPairing({ ttlMs: 30_000 });
  const identity = await joinWithPairingCode({ url: relay.url, code, WebSocket });
  await linked;
  await waitFor(() => issuer.client.devices().some((d) => d.device === identity.device.deviceId), 3_000, 'the new device registered');
  return identity;
};

const storedEpochs = (relay: RelayProcess, user: string): EpochRecord[] => {
  const db = new Database(relay.dbPath, { readonly: true, fileMustExist: true });
  try {
    return db
      .prepare<[string], { record: string }>(`SELECT record FROM epochs WHERE user_id = ? ORDER BY epoch`)
      .all(user)
      .map((r) => EpochRecordSchema.parse(JSON.parse(r.record)));
  } finally {
    db.close();
  }
};

/** Every key a thief holding `stolen` could have: epoch 0 from the root key, and each epoch sealed to the stolen device. */
const thiefCannotRead = (relay: RelayProcess, stolen: Identity, env: Envelope): void => {
  const records = storedEpochs(relay, stolen.user.userId);
  const newest = records.find((r) => r.epoch === env.epoch)!;
  expect(openEpochRecord(newest, stolen.device).ok).toBe(false);
  const secrets = [deriveEpochZeroSecret(stolen.user.rootKey)];
  for (const record of records) {
    const opened = openEpochRecord(record, stolen.device);
    if (opened.ok) secrets.push(opened.value);
  }
  for (const secret of secrets) expect(decryptEnvelope(env, deriveDocKey(secret, env.doc, env.epoch)).ok).toBe(false);
};

/**
 * The owner: a phone (first device), a laptop and a tablet linked by the phone, with a safety
 * plan and a mood log written before the theft. The tablet is the device that gets stolen.
 */
const ownerWithData = async (relay: RelayProcess) => {
  const phoneId = await createIdentity();
  const words = phoneId.recovery!.phrase;
  const phone = await scope.device(relay.url, phoneId);
  await phone.client.whenSynced();
  const laptopId = await pair(relay, phone);
  const tabletId = await pair(relay, phone);
  const laptop = await scope.device(relay.url, laptopId);
  const tablet = await scope.device(relay.url, tabletId);
  const planP = await phone.client.open(PLAN);
  const moodL = await laptop.client.open(MOOD);
  planP.getText('reasons').insert(0, 'my sister, my dog');
  planP.getMap('contacts').set('therapist', '555-0100');
  moodL.getArray('scores').push([3, 4, 5]);
  await Promise.all([phone.client.flush(), laptop.client.flush()]);
  const planT = await tablet.client.open(PLAN);
  await tablet.client.whenSynced();
  await waitFor(() => planT.getText('reasons').toString() === 'my sister, my dog', 3_000, 'the tablet has the plan');
  const before = { plan: Y.encodeStateAsUpdate(planP), mood: Y.encodeStateAsUpdate(moodL) };
  return { phoneId, laptopId, tabletId, words, phone, laptop, tablet, before };
};

/** The thief, holding the tablet (root key and all), revokes the owner's phone and laptop. */
const theft = async (owner: Awaited<ReturnType<typeof ownerWithData>>) => {
  const phoneCut = cutOff(owner.phone);
  const laptopCut = cutOff(owner.laptop);
  await owner.tablet.client.revokeDevice(owner.phoneId.device.deviceId);
  await owner.tablet.client.revokeDevice(owner.laptopId.device.deviceId);
  expect(await phoneCut).toBe(ErrorCode.DEVICE_REVOKED);
  expect(await laptopCut).toBe(ErrorCode.DEVICE_REVOKED);
  await Promise.all([owner.phone.client.close(), owner.laptop.client.close()]);
};

/** Opens both documents on a device and waits until it caught up with the relay. */
const openBoth = async (d: Device) => {
  const docs = { plan: await d.client.open(PLAN), mood: await d.client.open(MOOD) };
  await d.client.whenSynced();
  return docs;
};

describe('recovery from a stolen device', () => {
  it('the owner recovers the revoked phone with the 12 words: the thief is cut off, the data stays, later writes are sealed past the thief', async () => {
    const relay = await scope.relay();
    // An honest other user's crisis edits, all through the attack.
    const probe = await startCrisisProbe(scope, relay.url, { intervalMs: 10 });
    const owner = await ownerWithData(relay);
    await theft(owner);

    // Re-enrolling with the root key alone is refused: the relay cannot tell the owner from the thief.
    const fresh = generateDeviceKeys();
    const reenrol = await openRawSocket(relay.url);
    scope.defer(() => reenrol.close());
    const cert = certifyFirstDevice(owner.phoneId.user, fresh, Date.now(), owner.phoneId.recoveryKey);
    reenrol.sendFrame({ type: 'hello', v: PROTOCOL_VERSION, user: owner.phoneId.user.userId, device: fresh.deviceId, cert, escrow: owner.phoneId.escrow });
    const challenge = await reenrol.nextOf('challenge');
    reenrol.sendFrame({ type: 'auth', sig: signChallenge(challenge.relay, challenge.nonce, owner.phoneId.user.userId, fresh.deviceId, fresh.secretKey) });
    expect((await reenrol.nextOf('error')).code).toBe(ErrorCode.BAD_CERTIFICATE);
    expect((await reenrol.expectClose()).code).toBe(CloseCode.AUTH_FAILED);

    // Wrong words are refused before anything is sent.
    const wrong = await recoverThisDevice({ url: relay.url, identity: owner.phoneId, phrase: 'legal winner thank year wave sausage worth useful legal winner thank yellow', WebSocket }).catch((e: unknown) => e);
    expect((wrong as RecoveryError).code).toBe(ErrorCode.RECOVERY_UNKNOWN);
    const typo = await recoverThisDevice({ url: relay.url, identity: owner.phoneId, phrase: owner.words.replace(/\S+$/, 'zoo zoo'), WebSocket }).catch((e: unknown) => e);
    expect((typo as RecoveryError).code).toBe(ErrorCode.RECOVERY_PHRASE_INVALID);

    // The owner types the words on the revoked phone, keeping the laptop too.
    const thiefCut = cutOff(owner.tablet);
    const phoneId = await recoverThisDevice({
      url: relay.url,
      identity: owner.phoneId,
      phrase: `  ${owner.words.toUpperCase()} `,
      WebSocket,
      keep: [owner.laptopId.device.deviceId],
    });
    expect(await thiefCut).toBe(ErrorCode.DEVICE_REVOKED);

    // The thief is refused from now on and cannot revoke anyone again.
    const thiefAgain = await scope.device(relay.url, owner.tabletId);
    await expect(thiefAgain.client.whenSynced()).rejects.toThrow(/DEVICE_REVOKED/);
    const thiefRaw = await openRawSocket(relay.url);
    scope.defer(() => thiefRaw.close());
    thiefRaw.sendFrame({ type: 'hello', v: PROTOCOL_VERSION, user: owner.tabletId.user.userId, device: owner.tabletId.device.deviceId });
    // Once it proves its key it is shown the signed reset that revoked it, then refused.
    const thiefChallenge = await thiefRaw.nextOf('challenge');
    thiefRaw.sendFrame({ type: 'auth', sig: signChallenge(thiefChallenge.relay, thiefChallenge.nonce, owner.tabletId.user.userId, owner.tabletId.device.deviceId, owner.tabletId.device.secretKey) });
    const notice = await thiefRaw.nextOf('revoked');
    expect(notice).toMatchObject({ device: owner.tabletId.device.deviceId, reset: { gen: 1 } });
    expect(notice.reset?.keep).toContain(phoneId.device.deviceId);
    expect(notice.reset?.keep).not.toContain(owner.tabletId.device.deviceId);
    expect((await thiefRaw.nextOf('error')).code).toBe(ErrorCode.DEVICE_REVOKED);
    expect((await thiefRaw.expectClose()).code).toBe(CloseCode.DEVICE_REVOKED);
    expect(thiefRaw.received.some((f) => f.type === 'ready')).toBe(false);
    // Nor sign a reset of its own: it holds the root and user keys, not the recovery key.
    const forged = signRecoveryReset(owner.tabletId.user.userId, [owner.tabletId.device.deviceId], 2, { publicKey: owner.tabletId.user.userPublicKey, secretKey: owner.tabletId.user.userSecretKey }, Date.now());
    const forgery = await openRawSocket(relay.url);
    scope.defer(() => forgery.close());
    forgery.sendFrame({ type: 'hello', v: PROTOCOL_VERSION, user: owner.tabletId.user.userId, device: owner.tabletId.device.deviceId, recovery: forged });
    expect((await forgery.nextOf('error')).code).toBe(ErrorCode.RECOVERY_INVALID);

    // A reset applies once: the same statement again is refused before any challenge.
    const recovery = deriveRecoveryKeys((parseRecoveryPhrase(owner.words) as { ok: true; value: { entropy: Uint8Array } }).value.entropy);
    const keepBoth = [owner.phoneId.device.deviceId, owner.laptopId.device.deviceId];
    const second = signRecoveryReset(owner.phoneId.user.userId, keepBoth, 2, recovery, Date.now());
    const helloWithReset = { type: 'hello', v: PROTOCOL_VERSION, user: owner.phoneId.user.userId, device: owner.laptopId.device.deviceId, recovery: second };
    for (const expected of ['challenge', ErrorCode.RECOVERY_REPLAYED]) {
      const s = await openRawSocket(relay.url);
      scope.defer(() => s.close());
      s.sendFrame(helloWithReset);
      const answer = await s.next((f) => f.type === 'challenge' || f.type === 'error');
      expect(answer.type === 'error' ? answer.code : answer.type).toBe(expected);
      if (answer.type === 'challenge') {
        s.sendFrame({ type: 'auth', sig: signChallenge(answer.relay, answer.nonce, owner.laptopId.user.userId, owner.laptopId.device.deviceId, owner.laptopId.device.secretKey) });
        await s.nextOf('ready');
      }
      await s.close();
    }

    // The owner's devices come back on their own storage and read everything written before the theft.
    const phone = await scope.device(relay.url, phoneId, owner.phone.store);
    const laptop = await scope.device(relay.url, owner.laptopId, owner.laptop.store);
    const [onPhone, onLaptop] = await Promise.all([openBoth(phone), openBoth(laptop)]);
    expect(onPhone.plan.getText('reasons').toString()).toBe('my sister, my dog');
    expect(onLaptop.plan.getMap('contacts').get('therapist')).toBe('555-0100');
    expect(onPhone.mood.getArray('scores').toArray()).toEqual([3, 4, 5]);

    // A later write is sealed under the epoch the recovery published, which the thief's keys cannot open.
    onPhone.plan.getMap('contacts').set('sister', '555-0199');
    await phone.client.flush();
    await waitFor(() => onLaptop.plan.getMap('contacts').get('sister') === '555-0199', 3_000, 'the laptop reads the later write');
    const env = lastStoredEnvelope(relay.dbPath, phoneId.user.userId, phone.client.docId(PLAN));
    expect(env.epoch).toBe(Math.max(...storedEpochs(relay, phoneId.user.userId).map((r) => r.epoch)));
    // The epoch the recovery published (the thief's own epochs are dirty: it holds them).
    expect(storedEpochs(relay, phoneId.user.userId).find((r) => r.epoch === env.epoch)?.issuer).toBe(phoneId.device.deviceId);
    thiefCannotRead(relay, owner.tabletId, env);

    // Converged byte for byte.
    onLaptop.mood.getArray('scores').push([6]);
    await laptop.client.flush();
    await waitFor(() => onPhone.mood.getArray('scores').length === 4, 3_000, 'the phone reads the laptop');
    expect(Y.encodeStateAsUpdate(onPhone.plan)).toEqual(Y.encodeStateAsUpdate(onLaptop.plan));
    expect(Y.encodeStateAsUpdate(onPhone.mood)).toEqual(Y.encodeStateAsUpdate(onLaptop.mood));
    expect([...phone.errors, ...laptop.errors]).toEqual([]);

    const crisis = await probe.stop();
    expect(crisis.sent).toBeGreaterThan(0);
    expect(crisis.lost).toBe(0);
    expect(crisis.received).toBe(crisis.sent);
  });

  it('recovers from nothing but the 12 words on a new device: reads the owner’s data, cuts the thief off, seals later writes past it', async () => {
    const relay = await scope.relay();
    const probe = await startCrisisProbe(scope, relay.url, { intervalMs: 10 });
    const owner = await ownerWithData(relay);
    await theft(owner);

    const thiefCut = cutOff(owner.tablet);
    const recovered = await recoverDevice({ url: relay.url, phrase: owner.words, WebSocket, keep: [owner.laptopId.device.deviceId] });
    expect(await thiefCut).toBe(ErrorCode.DEVICE_REVOKED);
    expect(recovered.user.userId).toBe(owner.phoneId.user.userId);
    expect(recovered.user.rootKey).toEqual(owner.phoneId.user.rootKey);
    expect(recovered.cert.issuer).toBe('recovery');
    // A full identity: it survives secure storage, and the words are in none of it.
    const stored = serializeIdentity(recovered);
    expect(stored).not.toContain(owner.words.split(' ')[0]! + ' ' + owner.words.split(' ')[1]!);
    const identity = await parseIdentity(stored);

    const fresh = await scope.device(relay.url, identity);
    const onFresh = await openBoth(fresh);
    expect(Y.encodeStateAsUpdate(onFresh.plan)).toEqual(owner.before.plan);
    expect(Y.encodeStateAsUpdate(onFresh.mood)).toEqual(owner.before.mood);

    // The kept laptop comes back and converges; the phone, not kept, stays revoked; so does the thief.
    const laptop = await scope.device(relay.url, owner.laptopId, owner.laptop.store);
    const onLaptop = await openBoth(laptop);
    const phoneAgain = await scope.device(relay.url, owner.phoneId);
    await expect(phoneAgain.client.whenSynced()).rejects.toThrow(/DEVICE_REVOKED/);
    const thiefAgain = await scope.device(relay.url, owner.tabletId);
    await expect(thiefAgain.client.whenSynced()).rejects.toThrow(/DEVICE_REVOKED/);

    onFresh.plan.getText('reasons').insert(0, 'my recovered phone: ');
    await fresh.client.flush();
    await waitFor(() => onLaptop.plan.getText('reasons').toString().startsWith('my recovered phone'), 3_000, 'the laptop reads the new device');
    const env = lastStoredEnvelope(relay.dbPath, identity.user.userId, fresh.client.docId(PLAN));
    expect(env.device).toBe(identity.device.deviceId);
    thiefCannotRead(relay, owner.tabletId, env);
    onLaptop.mood.getArray('scores').push([7]);
    await laptop.client.flush();
    await waitFor(() => onFresh.mood.getArray('scores').length === 4, 3_000, 'the new device reads the laptop');
    expect(Y.encodeStateAsUpdate(onFresh.plan)).toEqual(Y.encodeStateAsUpdate(onLaptop.plan));
    expect(Y.encodeStateAsUpdate(onFresh.mood)).toEqual(Y.encodeStateAsUpdate(onLaptop.mood));
    expect([...fresh.errors, ...laptop.errors]).toEqual([]);

    // The words again, once more from nothing: a new reset (the next generation), not a replay.
    const again = await recoverDevice({ url: relay.url, phrase: owner.words, WebSocket, keep: [identity.device.deviceId, owner.laptopId.device.deviceId] });
    expect(again.user.userId).toBe(identity.user.userId);

    const crisis = await probe.stop();
    expect(crisis.sent).toBeGreaterThan(0);
    expect(crisis.lost).toBe(0);
    expect(crisis.received).toBe(crisis.sent);
  });

  it('refuses the words of a user that has none on this relay', async () => {
    const relay = await scope.relay();
    const stranger = await createIdentity();
    const result = await recoverDevice({ url: relay.url, phrase: stranger.recovery!.phrase, WebSocket, timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(result).toBeInstanceOf(RecoveryError);
    expect((result as RecoveryError).code).toBe(ErrorCode.RECOVERY_UNKNOWN);
  });
});

describe('revocation cascades', () => {
  it('revokes with the thief the devices it registered, but not one another live device vouched for', async () => {
    const relay = await scope.relay();
    const phone = await scope.device(relay.url, await createIdentity());
    await phone.client.whenSynced();
    const tabletId = await pair(relay, phone);
    const tablet = await scope.device(relay.url, tabletId);
    await tablet.client.whenSynced();
    // Before it is found out, the thief links two devices of its own making from the tablet.
    const xId = await pair(relay, tablet);
    const yId = await pair(relay, tablet);
    const [x, y] = [await scope.device(relay.url, xId), await scope.device(relay.url, yId)];
    await Promise.all([x.client.whenSynced(), y.client.whenSynced()]);
    // The owner vouches for y (say the thief linked it for the owner, who uses it).
    await waitFor(() => phone.client.devices().some((d) => d.device === yId.device.deviceId), 3_000, 'the phone knows y');
    await phone.client.vouchFor(yId.device.deviceId);

    const [tabletCut, xCut] = [cutOff(tablet), cutOff(x)];
    const epoch = await phone.client.revokeDevice(tabletId.device.deviceId);
    expect(await tabletCut).toBe(ErrorCode.DEVICE_REVOKED);
    expect(await xCut).toBe(ErrorCode.DEVICE_REVOKED);
    const xAgain = await scope.device(relay.url, xId);
    await expect(xAgain.client.whenSynced()).rejects.toThrow(/DEVICE_REVOKED/);
    expect(phone.client.devices().map((d) => d.device).sort()).toEqual([phone.client.identity.device.deviceId, yId.device.deviceId].sort());

    // The new epoch is sealed to the phone and y only: y reads what comes next, x cannot.
    const record = storedEpochs(relay, tabletId.user.userId).find((r) => r.epoch === epoch)!;
    expect(record.wraps.map((w) => w.device).sort()).toEqual([phone.client.identity.device.deviceId, yId.device.deviceId].sort());
    expect(openEpochRecord(record, xId.device).ok).toBe(false);
    const planP = await phone.client.open(PLAN);
    const planY = await y.client.open(PLAN);
    planP.getMap('p').set('after', 'for the phone and y');
    await phone.client.flush();
    await waitFor(() => planY.getMap('p').get('after') === 'for the phone and y', 3_000, 'y reads the new epoch');
    expect([...phone.errors, ...y.errors]).toEqual([]);
  });
});
