import { type Identity, createIdentity, serializeIdentity } from '@keel/client';
import {
  type DeviceId,
  ErrorCode,
  certifyDevice,
  createEpochRecord,
  generateDeviceKeys,
  generateEpochSecret,
  signRevocation,
} from '@keel/engine';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { startAttacker } from '../support/attacker-process.js';
import { isAlive, memoryOf, startCrisisProbe } from '../support/crisis-probe.js';
import { type RawSocket, connectRawDevice } from '../support/raw-device.js';
import { useTestScope } from '../support/scope.js';

/** Registers `n` more devices of `identity`'s user through its socket; returns their ids and keys. */
const registerDevices = async (s: RawSocket, identity: Identity, n: number): Promise<Map<DeviceId, Uint8Array>> => {
  const devices = new Map<DeviceId, Uint8Array>();
  for (let i = 0; i < n; i++) {
    const keys = generateDeviceKeys();
    s.sendFrame({ type: 'register', cert: certifyDevice(identity.user, identity.device, keys.publicKey, Date.now()) });
    await s.next((f) => f.type === 'device' && f.cert.device === keys.deviceId, 5_000);
    devices.set(keys.deviceId, keys.publicKey);
  }
  return devices;
};

const countRows = (dbPath: string, sql: string, ...args: unknown[]): number => {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare(sql).get(...args) as { n: number }).n;
  } finally {
    db.close();
  }
};

/**
 * Finding 5 of step 5: records a device could make the relay keep without bound — key epochs
 * (tens of MB, each parsed at every authentication), pairing sessions, subscriptions (see
 * subscriptions.test.ts) — and device registrations.
 */
describe('attack: unbounded records', () => {
  const scope = useTestScope();

  it('caps key epochs (count and size) and keeps re-authentication cheap for everyone', async () => {
    const relay = await scope.relay({ env: { KEEL_RELAY_MAX_EPOCHS_PER_USER: '100' } });
    const mallory = await createIdentity();
    const s = await connectRawDevice(relay.url, mallory);
    scope.defer(() => s.close());
    // As large as a record may be: sealed to the most devices a user may have.
    const recipients = await registerDevices(s, mallory, 31);
    recipients.set(mallory.device.deviceId, mallory.device.publicKey);
    for (let epoch = 1; epoch <= 100; epoch++) {
      s.sendFrame({ type: 'epoch', record: createEpochRecord(mallory.user.userId, epoch, mallory.device, generateEpochSecret(), recipients, Date.now()) });
      await s.next((f) => f.type === 'epoch' && f.record.epoch === epoch, 5_000);
    }
    s.sendFrame({ type: 'epoch', record: createEpochRecord(mallory.user.userId, 101, mallory.device, generateEpochSecret(), recipients, Date.now()) });
    expect((await s.nextOf('error', 5_000)).code).toBe(ErrorCode.LIMIT_EXCEEDED);
    // Wrapped for devices that are not the user's (to grow a record): refused.
    const strangers = new Map([...recipients].slice(0, 8));
    for (let i = 0; i < 8; i++) {
      const keys = generateDeviceKeys();
      strangers.set(keys.deviceId, keys.publicKey);
    }
    s.sendFrame({ type: 'epoch', record: createEpochRecord(mallory.user.userId, 101, mallory.device, generateEpochSecret(), strangers, Date.now()) });
    expect((await s.nextOf('error', 5_000)).code).toBe(ErrorCode.UNKNOWN_DEVICE);
    expect(countRows(relay.dbPath, 'SELECT count(*) AS n FROM epochs WHERE user_id = ?', mallory.user.userId)).toBe(100);
    await s.close();

    // Every authentication sends the latest 64 records; the attacker re-authenticates in waves.
    const probe = await startCrisisProbe(scope, relay.url);
    const attacker = await startAttacker(scope, {
      url: relay.url,
      sockets: Array.from({ length: 24 }, () => ({ auth: serializeIdentity(mallory), frames: [] })),
      waves: 6,
      durationMs: 10_000,
    });
    const report = await attacker.done;
    const crisis = await probe.stop();
    console.info('epoch records and re-authentication', { report: { ...report, errors: report.errors.length }, crisis, memory: memoryOf(relay.pid) });
    expect(report.authenticated).toBe(144);
    expect(crisis.lost).toBe(0);
    expect(crisis.p99).toBeLessThan(200);
    expect(isAlive(relay.pid)).toBe(true);
    // 100 records of 32 wraps and 144 readies of 64 of them: the relay stays small.
    expect(memoryOf(relay.pid).peakMiB).toBeLessThan(300);
  });

  it('caps pairing codes per device, and closing the device drops them', async () => {
    const relay = await scope.relay();
    const mallory = await createIdentity();
    const s = await connectRawDevice(relay.url, mallory);
    scope.defer(() => s.close());
    const answers: string[] = [];
    for (let i = 0; i < 10; i++) {
      s.sendFrame({ type: 'pair-open', id: `pairing${String(i).padStart(9, '0')}`, ttlMs: 60_000 });
      const answer = await s.next((f) => f.type === 'pair-opened' || f.type === 'error', 5_000);
      answers.push(answer.type === 'error' ? answer.code : answer.type);
    }
    expect(answers).toEqual([...Array.from({ length: 4 }, () => 'pair-opened'), ...Array.from({ length: 6 }, () => ErrorCode.LIMIT_EXCEEDED)]);
    // A new connection of the same device starts with none: the closed one's codes went with it.
    await s.close();
    const again = await connectRawDevice(relay.url, mallory);
    scope.defer(() => again.close());
    for (let i = 0; i < 4; i++) {
      again.sendFrame({ type: 'pair-open', id: `again${String(i).padStart(11, '0')}`, ttlMs: 60_000 });
      expect((await again.next((f) => f.type === 'pair-opened' || f.type === 'error', 5_000)).type).toBe('pair-opened');
    }
  });

  it('caps devices per user, live and ever registered', async () => {
    const relay = await scope.relay({ env: { KEEL_RELAY_MAX_DEVICES_PER_USER: '8', KEEL_RELAY_MAX_REGISTRATIONS_PER_USER: '12' } });
    const mallory = await createIdentity();
    const s = await connectRawDevice(relay.url, mallory);
    scope.defer(() => s.close());
    const devices = [...(await registerDevices(s, mallory, 7)).keys()];
    const refusedLive = generateDeviceKeys();
    s.sendFrame({ type: 'register', cert: certifyDevice(mallory.user, mallory.device, refusedLive.publicKey, Date.now()) });
    expect((await s.nextOf('error', 5_000)).code).toBe(ErrorCode.LIMIT_EXCEEDED);
    // Revoking makes room among the live devices, but not beyond the registrations ever made.
    for (const device of devices.slice(0, 6)) {
      s.sendFrame({ type: 'revoke', revocation: signRevocation(mallory.user.userId, device, mallory.device, Date.now()) });
      await s.next((f) => f.type === 'revoked' && f.device === device, 5_000);
    }
    await registerDevices(s, mallory, 4);
    const refusedTotal = generateDeviceKeys();
    s.sendFrame({ type: 'register', cert: certifyDevice(mallory.user, mallory.device, refusedTotal.publicKey, Date.now()) });
    expect((await s.nextOf('error', 5_000)).code).toBe(ErrorCode.LIMIT_EXCEEDED);
    expect(countRows(relay.dbPath, 'SELECT count(*) AS n FROM devices WHERE user_id = ?', mallory.user.userId)).toBe(12);
    // Signed revocations are kept one per revoked device: revoking one again replaces its record.
    for (let i = 0; i < 8; i++) {
      const revocation = signRevocation(mallory.user.userId, devices[0]!, mallory.device, Date.now() + i);
      s.sendFrame({ type: 'revoke', revocation });
      await s.next((f) => f.type === 'revoked' && f.revocation?.sig === revocation.sig, 5_000);
    }
    expect(countRows(relay.dbPath, 'SELECT count(*) AS n FROM revocations WHERE user_id = ?', mallory.user.userId)).toBe(6);
  });
});
