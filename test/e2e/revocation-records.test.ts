import { type Identity, createIdentity, linkNewDevice } from '@keel/client';
import {
  CloseCode,
  ErrorCode,
  PROTOCOL_VERSION,
  cryptoReady,
  deriveRecoveryKeys,
  parseRecoveryPhrase,
  signChallenge,
  signRecoveryReset,
  signRevocation,
  verifyRecoveryReset,
  verifyRevocation,
} from '@keel/engine';
import { beforeAll, describe, expect, it } from 'vitest';
import { type FrameOf, type RawSocket, authenticate, connectRawDevice, openRawSocket } from '../support/raw-device.js';
import type { RelayProcess } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();
beforeAll(async () => {
  await cryptoReady();
});

/** A raw device of `identity`, authenticated and closed after the test. */
const online = async (relay: RelayProcess, identity: Identity): Promise<RawSocket> => {
  const raw = await connectRawDevice(relay.url, identity);
  scope.defer(() => raw.close());
  return raw;
};

/** A fresh connection's `ready` for `identity`. */
const readyOf = async (relay: RelayProcess, identity: Identity): Promise<FrameOf<'ready'>> => {
  const raw = await openRawSocket(relay.url);
  try {
    return await authenticate(raw, identity);
  } finally {
    await raw.close();
  }
};

/**
 * A revoked device connecting again: it answers the challenge, and must get its `revoked`
 * frame, the DEVICE_REVOKED error and the 4003 close — never `ready`. Resolves to the frame.
 */
const refusedAgain = async (relay: RelayProcess, identity: Identity): Promise<FrameOf<'revoked'>> => {
  const raw = await openRawSocket(relay.url);
  scope.defer(() => raw.close());
  const { user, device } = identity;
  raw.sendFrame({ type: 'hello', v: PROTOCOL_VERSION, user: user.userId, device: device.deviceId });
  const challenge = await raw.nextOf('challenge');
  raw.sendFrame({ type: 'auth', sig: signChallenge(challenge.relay, challenge.nonce, user.userId, device.deviceId, device.secretKey) });
  expect((await raw.expectClose(5_000)).code).toBe(CloseCode.DEVICE_REVOKED);
  // In this order, and nothing that serves a device.
  expect(raw.received.map((f) => (f.type === 'error' ? `error:${f.code}` : f.type))).toEqual(['challenge', 'revoked', `error:${ErrorCode.DEVICE_REVOKED}`]);
  return raw.received[1] as FrameOf<'revoked'>;
};

/** Waits for the close of a socket the relay cut off; resolves to every `revoked` frame it got, in order. */
const cutOff = async (raw: RawSocket): Promise<FrameOf<'revoked'>[]> => {
  expect((await raw.expectClose(5_000)).code).toBe(CloseCode.DEVICE_REVOKED);
  expect(raw.received.some((f) => f.type === 'error')).toBe(false);
  return raw.received.filter((f): f is FrameOf<'revoked'> => f.type === 'revoked');
};

describe('revocation records: the relay hands devices the signed records it revoked them on', () => {
  it('keeps revocations and resets, sends them in ready and in every revoked frame (target, cascade, reset), and shows a revoked device its record before 4003 — after a restart too', async () => {
    const relay = await scope.relay();
    const owner = await createIdentity();
    const recovery = deriveRecoveryKeys((parseRecoveryPhrase(owner.recovery!.phrase) as { ok: true; value: { entropy: Uint8Array } }).value.entropy);
    const user = owner.user.userId;
    const phone = await online(relay, owner);
    const laptopId = await linkNewDevice(owner);
    const thiefId = await linkNewDevice(owner);
    const laptop = await online(relay, laptopId);
    const thief = await online(relay, thiefId);
    // A device the thief linked: nobody live vouches for it, so it goes with the thief.
    const orphanId = await linkNewDevice(thiefId);
    const orphan = await online(relay, orphanId);
    expect(await readyOf(relay, owner)).not.toHaveProperty('revocations');

    // The phone revokes the thief.
    const revocation = signRevocation(user, thiefId.device.deviceId, owner.device, Date.now());
    phone.sendFrame({ type: 'revoke', revocation });
    // Each cut-off device is shown its own record first: the thief its revocation, the orphan the
    // revocation of the device it hung from.
    expect(await cutOff(orphan)).toEqual([{ type: 'revoked', device: orphanId.device.deviceId, revocation }]);
    const thiefFrames = await cutOff(thief);
    expect(thiefFrames.at(-1)).toEqual({ type: 'revoked', device: thiefId.device.deviceId, revocation });
    // The user's other devices get both, the cascade first, each with a record that verifies.
    for (const raw of [phone, laptop]) {
      const cascade = await raw.nextOf('revoked', 5_000);
      const target = await raw.nextOf('revoked', 5_000);
      expect([cascade, target]).toEqual([
        { type: 'revoked', device: orphanId.device.deviceId, revocation },
        { type: 'revoked', device: thiefId.device.deviceId, revocation },
      ]);
      expect(verifyRevocation(target.revocation!, owner.device.publicKey)).toBe(true);
    }

    // A new connection's ready carries the record; a revoked device coming back is shown it again.
    const afterRevoke = await readyOf(relay, laptopId);
    expect(afterRevoke.revocations).toEqual([revocation]);
    expect(afterRevoke).not.toHaveProperty('reset');
    expect(await refusedAgain(relay, thiefId)).toEqual({ type: 'revoked', device: thiefId.device.deviceId, revocation });
    expect(await refusedAgain(relay, orphanId)).toEqual({ type: 'revoked', device: orphanId.device.deviceId, revocation });

    // A recovery reset on the phone keeps only the phone: the laptop, online, is shown the reset.
    await phone.close();
    const reset = signRecoveryReset(user, [owner.device.deviceId], 1, recovery, Date.now());
    const recovered = await openRawSocket(relay.url);
    scope.defer(() => recovered.close());
    recovered.sendFrame({ type: 'hello', v: PROTOCOL_VERSION, user, device: owner.device.deviceId, recovery: reset });
    const challenge = await recovered.nextOf('challenge');
    recovered.sendFrame({ type: 'auth', sig: signChallenge(challenge.relay, challenge.nonce, user, owner.device.deviceId, owner.device.secretKey) });
    // The recovering device learns what the reset revoked from the reset in its ready.
    const afterReset = await recovered.nextOf('ready', 5_000);
    expect(afterReset.reset).toEqual(reset);
    expect(verifyRecoveryReset(afterReset.reset!, recovery.publicKey)).toBe(true);
    expect(afterReset.revocations).toEqual([revocation]);
    // (Its earlier revoked frames were the thief's and the orphan's.)
    expect((await cutOff(laptop)).at(-1)).toEqual({ type: 'revoked', device: laptopId.device.deviceId, reset });
    await recovered.close();

    // After a restart, on the same database: the same records, in ready and for revoked devices.
    await relay.stop();
    const again = await scope.relay({ dir: relay.dir });
    const restarted = await readyOf(again, owner);
    expect(restarted.revocations).toEqual([revocation]);
    expect(restarted.reset).toEqual(reset);
    expect(await refusedAgain(again, laptopId)).toEqual({ type: 'revoked', device: laptopId.device.deviceId, reset });
    // Revoked before the reset, which did not keep it: both records.
    expect(await refusedAgain(again, thiefId)).toEqual({ type: 'revoked', device: thiefId.device.deviceId, revocation, reset });
  });
});
