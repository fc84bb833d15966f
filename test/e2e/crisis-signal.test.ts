import { createHmac } from 'node:crypto';
import { createIdentity, linkNewDevice } from '@keel/client';
import { cryptoReady, getSodium, signCrisisSignal, toB64 } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { useTestScope } from '../support/scope.js';

const SECRET = 'crisis-service-secret-0123456789';

/** A `POST /crisis` as the operator's crisis service sends it: the body HMAC-signed like Stripe's webhooks. */
const post = async (httpUrl: string, body: unknown, secret = SECRET) => {
  const text = JSON.stringify(body);
  const t = Math.floor(Date.now() / 1000);
  const v1 = createHmac('sha256', secret).update(`${t}.${text}`).digest('hex');
  const res = await fetch(`${httpUrl}/crisis`, { method: 'POST', headers: { 'content-type': 'application/json', 'keel-signature': `t=${t},v1=${v1}` }, body: text });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
};

/**
 * Step 8: an external crisis signal (a clinician, a hotline integration) puts every device of a
 * pseudonymous user into crisis mode: those online at once, those offline when they connect.
 * The relay cannot write the encrypted crisis-mode document; the devices act on the signal.
 */
describe('POST /crisis', () => {
  const scope = useTestScope();

  it('puts two online devices and one that connects later into crisis mode, once; a bad signature is a 400 and changes nothing', async () => {
    const relay = await scope.relay({ env: { KEEL_RELAY_CRISIS_SECRET: SECRET } });
    const user = await createIdentity();
    const phone = await scope.device(relay.url, user);
    const laptop = await scope.device(relay.url, await linkNewDevice(user));
    const tabletIdentity = await linkNewDevice(user);
    await Promise.all([phone.client.whenSynced(), laptop.client.whenSynced()]);
    // The tablet registers, then goes offline before the signal.
    const tabletFirst = await scope.device(relay.url, tabletIdentity);
    await tabletFirst.client.whenSynced();
    await tabletFirst.client.close();
    const other = await scope.device(relay.url, await createIdentity());
    await other.client.whenSynced();
    expect(phone.client.crisisMode).toBe(false);

    const signal = { id: 'sig_clinician_0001', at: Date.now(), reason: 'clinician' };
    // Forged (another secret), and a valid signature replayed over another user's body: 400, nothing changes.
    expect((await post(relay.httpUrl, { user: user.user.userId, signal }, 'not-the-crisis-secret-000')).status).toBe(400);
    const t = Math.floor(Date.now() / 1000);
    const stolen = createHmac('sha256', SECRET).update(`${t}.${JSON.stringify({ user: user.user.userId, signal })}`).digest('hex');
    const replay = await fetch(`${relay.httpUrl}/crisis`, {
      method: 'POST',
      headers: { 'keel-signature': `t=${t},v1=${stolen}` },
      body: JSON.stringify({ user: other.client.identity.user.userId, signal }),
    });
    expect(replay.status).toBe(400);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(phone.client.crisisMode || laptop.client.crisisMode || other.client.crisisMode).toBe(false);

    const delivered = await post(relay.httpUrl, { user: user.user.userId, signal });
    expect(delivered).toMatchObject({ status: 200, body: { outcome: 'DELIVERED', devicesOnline: 2 } });
    // Both online devices, at once.
    await waitFor(() => phone.client.crisisMode && laptop.client.crisisMode, 2_000, 'crisis mode on the online devices');
    // The offline tablet, when it connects.
    const tablet = await scope.device(relay.url, tabletIdentity, tabletFirst.store);
    await waitFor(() => tablet.client.crisisMode, 5_000, 'crisis mode on the device that connected later');
    // Another user's device was never told.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(other.client.crisisMode).toBe(false);

    // The same signal again is a duplicate; after the user ends crisis mode, a reconnect (which
    // redelivers kept signals) does not turn it back on.
    expect((await post(relay.httpUrl, { user: user.user.userId, signal })).body).toMatchObject({ outcome: 'DUPLICATE' });
    await phone.client.setCrisisMode(false, 'user');
    await waitFor(() => !laptop.client.crisisMode && !tablet.client.crisisMode, 5_000, 'crisis mode ended everywhere');
    await laptop.client.close();
    const laptopAgain = await scope.device(relay.url, laptop.client.identity, laptop.store);
    await laptopAgain.client.whenSynced();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(laptopAgain.client.crisisMode).toBe(false);

    // Bad input: unknown user 404, bad schema 400 (both audited), free-text reasons refused.
    expect((await post(relay.httpUrl, { user: other.client.identity.user.userId.replace(/.$/, 'x'), signal: { ...signal, id: 'sig_unknown_user' } })).status).toBe(404);
    expect((await post(relay.httpUrl, { user: user.user.userId, signal: { ...signal, reason: 'said they would hurt themselves' } })).status).toBe(400);
    const metrics = await (await fetch(`${relay.httpUrl}/metrics`)).text();
    expect(metrics).toContain('keel_crisis_signals_total{outcome="DELIVERED"} 1');
    expect(metrics).toContain('keel_crisis_signals_total{outcome="BAD_SIGNATURE"} 2');
  });

  it('with a crisis authority key, takes only signals it signed, and devices pinned to it check too', async () => {
    await cryptoReady();
    const authority = getSodium().crypto_sign_keypair();
    const key = toB64(authority.publicKey);
    const relay = await scope.relay({ args: ['--relay-id', 'clinic-relay'], env: { KEEL_RELAY_CRISIS_SECRET: SECRET, KEEL_RELAY_CRISIS_AUTHORITY_KEYS: key } });
    const user = await createIdentity();
    const phone = await scope.device(relay.url, user, undefined, { relayId: 'clinic-relay', crisisAuthorityKeys: [key] });
    await phone.client.whenSynced();
    const unsigned = { id: 'sig_unsigned_0001', at: Date.now(), reason: 'hotline' as const };
    expect(await post(relay.httpUrl, { user: user.user.userId, signal: unsigned })).toMatchObject({ status: 400, body: { error: 'BAD_AUTHORITY_SIGNATURE' } });
    const sig = signCrisisSignal({ relay: 'clinic-relay' as never, user: user.user.userId, ...unsigned, id: 'sig_signed_0001' }, authority.privateKey);
    expect((await post(relay.httpUrl, { user: user.user.userId, signal: { ...unsigned, id: 'sig_signed_0001', sig } })).status).toBe(200);
    await waitFor(() => phone.client.crisisMode, 2_000, 'crisis mode from a signed signal');
  });

  it('a device pinned to a crisis authority ignores a signal its relay forwards unsigned (no relay can fake one)', async () => {
    await cryptoReady();
    const key = toB64(getSodium().crypto_sign_keypair().publicKey);
    // This relay checks no authority: it forwards whatever its HMAC lets in.
    const relay = await scope.relay({ env: { KEEL_RELAY_CRISIS_SECRET: SECRET } });
    const user = await createIdentity();
    const pinned = await scope.device(relay.url, user, undefined, { crisisAuthorityKeys: [key] });
    const trusting = await scope.device(relay.url, await linkNewDevice(user));
    await Promise.all([pinned.client.whenSynced(), trusting.client.whenSynced()]);
    expect((await post(relay.httpUrl, { user: user.user.userId, signal: { id: 'sig_unsigned_0002', at: Date.now(), reason: 'other' } })).status).toBe(200);
    await waitFor(() => pinned.errors.some((e) => e.code === 'BAD_SIGNATURE'), 2_000, 'the pinned device refusing the signal');
    // The other device took the relay's word and turned crisis mode on; that syncs to the pinned
    // device as the user's own (signed, encrypted) crisis-mode document, which it believes.
    await waitFor(() => trusting.client.crisisMode, 2_000, 'crisis mode on the trusting device');
  });
});
