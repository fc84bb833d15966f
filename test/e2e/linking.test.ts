import { type Identity, PairingError, createIdentity, joinWithPairingCode } from '@keel/client';
import { cryptoReady, decryptEnvelope, deriveDocKey, deriveEpochZeroSecret } from '@keel/engine';
import { beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import * as Y from 'yjs';
import { type Device, waitFor } from '../support/devices.js';
import { lastStoredEnvelope } from '../support/raw-device.js';
import type { RelayProcess } from '../support/relay-process.js';
import { startProxy } from '../support/proxy.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();
beforeAll(async () => {
  await cryptoReady();
});

const startRelay = () => scope.relay();
const device = (url: string, identity: Identity): Promise<Device> => scope.device(url, identity);

/** Links a new device to `a`'s user with a pairing code, as a person would. */
const pairNewDevice = async (relay: RelayProcess, a: Device) => {
  const { code, linked } = await a.client.startPairing({ ttlMs: 30_000 });
  const identity = await joinWithPairingCode({ url: relay.url, code, WebSocket });
  const cert = await linked;
  expect(cert.device).toBe(identity.device.deviceId);
  return { code, identity };
};

describe('device linking with a pairing code', () => {
  it('links a third device that then reads every document', async () => {
    const relay = await startRelay();
    const a = await device(relay.url, await createIdentity());
    const plan = await a.client.open({ class: 'safety_plan', name: 'main' });
    const mood = await a.client.open({ class: 'mood', name: 'log' });
    plan.getText('reasons').insert(0, 'my dog, my sister');
    mood.getArray('scores').push([3, 4, 5]);
    await a.client.flush();

    const { identity } = await pairNewDevice(relay, a);
    expect(identity.user.userId).toBe(a.client.identity.user.userId);
    await waitFor(() => a.client.devices().some((d) => d.device === identity.device.deviceId), 2_000, 'registered at A');
    const c = await device(relay.url, identity);
    const planC = await c.client.open({ class: 'safety_plan', name: 'main' });
    const moodC = await c.client.open({ class: 'mood', name: 'log' });
    await c.client.whenSynced();
    expect(Y.encodeStateAsUpdate(planC)).toEqual(Y.encodeStateAsUpdate(plan));
    expect(moodC.getArray('scores').toArray()).toEqual([3, 4, 5]);
    expect(c.errors).toEqual([]);
  });

  it('refuses a stolen code used a second time, an expired code and an unknown code', async () => {
    const relay = await startRelay();
    const a = await device(relay.url, await createIdentity());
    await a.client.whenSynced();
    const { code } = await pairNewDevice(relay, a);
    const reuse = await joinWithPairingCode({ url: relay.url, code, WebSocket, timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(reuse).toBeInstanceOf(PairingError);
    expect(['PAIRING_NOT_FOUND', 'PAIRING_USED']).toContain((reuse as PairingError).code);

    const short = await a.client.startPairing({ ttlMs: 1_000 });
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    const late = await joinWithPairingCode({ url: relay.url, code: short.code, WebSocket, timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect(late).toBeInstanceOf(PairingError);
    expect(['PAIRING_EXPIRED', 'PAIRING_NOT_FOUND']).toContain((late as PairingError).code);
    await expect(short.linked).rejects.toThrow(/PAIRING_EXPIRED/);

    const bogus = await joinWithPairingCode({ url: relay.url, code: `keel-${'A'.repeat(38)}`, WebSocket, timeoutMs: 5_000 }).catch((e: unknown) => e);
    expect((bogus as PairingError).code).toBe('PAIRING_NOT_FOUND');
    const malformed = await joinWithPairingCode({ url: relay.url, code: 'hello', WebSocket }).catch((e: unknown) => e);
    expect((malformed as PairingError).code).toBe('SCHEMA');
  });
});

describe('device revocation', () => {
  it('cuts a revoked device off at once, refuses it afterwards, and moves writes to a key epoch it lacks', async () => {
    const relay = await startRelay();
    const a = await device(relay.url, await createIdentity());
    await a.client.whenSynced();
    const { identity: idB } = await pairNewDevice(relay, a);
    const { identity: idC } = await pairNewDevice(relay, a);
    const b = await device(relay.url, idB);
    const c = await device(relay.url, idC);
    const spec = { class: 'safety_plan', name: 'main' } as const;
    const [planA, planB, planC] = await Promise.all([a.client.open(spec), b.client.open(spec), c.client.open(spec)]);
    planA.getMap('p').set('before', 'everyone sees this');
    await a.client.flush();
    await waitFor(() => planC.getMap('p').get('before') !== undefined && planB.getMap('p').get('before') !== undefined, 3_000, 'shared');

    const cut = new Promise<string>((resolve) => c.client.on('error', (e) => e.final && resolve(e.code)));
    const epoch = await a.client.revokeDevice(idC.device.deviceId);
    expect(epoch).toBe(1);
    expect(await cut).toBe('DEVICE_REVOKED');
    await waitFor(() => !b.client.devices().some((d) => d.device === idC.device.deviceId), 2_000, 'B learns of the revocation');

    planA.getMap('p').set('after', 'not for the revoked device');
    await a.client.flush();
    await waitFor(() => planB.getMap('p').get('after') !== undefined, 3_000, 'B reads the new epoch');
    expect(planC.getMap('p').get('after')).toBeUndefined();

    // What was written after the revocation is sealed under epoch 1, which C never received.
    const docId = a.client.docId(spec);
    const env = lastStoredEnvelope(relay.dbPath, a.client.identity.user.userId, docId);
    expect(env.epoch).toBe(1);
    const epoch0Key = deriveDocKey(deriveEpochZeroSecret(idC.user.rootKey), docId, 0);
    expect(decryptEnvelope(env, epoch0Key).ok).toBe(false);
    expect(decryptEnvelope({ ...env, epoch: 0 }, epoch0Key).ok).toBe(false);

    // And the relay refuses the revoked device from now on.
    const again = await scope.device(relay.url, idC);
    await expect(again.client.whenSynced()).rejects.toThrow(/DEVICE_REVOKED|AUTH_FAILED/);
    expect([...a.errors, ...b.errors]).toEqual([]);
  });
});

describe('pairing at any moment', () => {
  it('startPairing right after start waits for the link, and returns the code only once the relay holds the session: a device joining at once is linked', async () => {
    const relay = await startRelay();
    const a = await device(relay.url, await createIdentity());
    // Not connected yet: the link is still connecting.
    expect(a.client.status).not.toBe('synced');
    const { code, linked } = await a.client.startPairing({ ttlMs: 30_000 });
    const joined = await joinWithPairingCode({ url: relay.url, code, WebSocket });
    expect((await linked).device).toBe(joined.device.deviceId);
    expect(a.errors).toEqual([]);
  });

  it('a session opened before the link dropped is opened again on the next connection, so the code still works', async () => {
    const relay = await startRelay();
    const proxy = await startProxy(relay.port);
    scope.defer(() => proxy.close());
    const a = await device(proxy.url, await createIdentity());
    await a.client.whenSynced();
    const { code, linked } = await a.client.startPairing({ ttlMs: 30_000 });
    proxy.setOffline(true);
    await waitFor(() => a.client.status === 'offline', 5_000, 'the link down');
    proxy.setOffline(false);
    await waitFor(() => a.client.status === 'synced', 10_000, 'the link back');
    const joined = await joinWithPairingCode({ url: relay.url, code, WebSocket });
    expect((await linked).device).toBe(joined.device.deviceId);
  });
});
