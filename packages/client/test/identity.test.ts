import { GrantPayloadSchema, encodeGrant } from '../src/pairing.js';
import { authorizeDevice, createDeviceKeys, createIdentity, linkNewDevice, parseIdentity, serializeIdentity } from '../src/index.js';
import { deriveRecoveryKeys, openRootKeyEscrow, parseRecoveryPhrase, toB64 } from '@keel/engine';
import { describe, expect, it } from 'vitest';

describe('identities and the recovery key', () => {
  it('shows the words once: the new identity carries them, nothing that stores or copies it does', async () => {
    const identity = await createIdentity();
    const words = identity.recovery!;
    expect(words.phrase.split(' ')).toHaveLength(12);
    expect(words.code).toMatch(/^keel-recovery:/);
    const parsed = parseRecoveryPhrase(words.phrase);
    if (!parsed.ok) throw new Error(parsed.error.message);
    const recovery = deriveRecoveryKeys(parsed.value.entropy);
    // The identity keeps only the public key and the escrow, which opens with the words.
    expect(identity.recoveryKey).toEqual(recovery.publicKey);
    expect(identity.cert.recoveryKey).toBe(toB64(recovery.publicKey));
    expect(openRootKeyEscrow(identity.escrow!, identity.user.userId, recovery)).toEqual({ ok: true, value: identity.user.rootKey });

    const stored = serializeIdentity(identity);
    expect(stored).not.toContain(words.code.slice('keel-recovery:'.length));
    // No stored value is one of the words, and not even two of them in a row appear anywhere.
    // (Matching each word against the whole text flaked: "device" is a BIP39 word and a key of
    // the stored identity, so one phrase in ~170 "leaked"; and a short word turns up by chance
    // inside base64 now and then.)
    const list = words.phrase.split(' ');
    for (let i = 1; i < list.length; i++) expect(stored).not.toContain(`${list[i - 1]} ${list[i]}`);
    const values: string[] = [];
    JSON.parse(stored, (_key, value: unknown) => {
      if (typeof value === 'string') values.push(value);
      return value;
    });
    for (const word of list) expect(values).not.toContain(word);
    expect(JSON.stringify(identity)).not.toContain(words.phrase);
    expect({ ...identity }).not.toHaveProperty('recovery');

    const back = await parseIdentity(stored);
    expect(back.recoveryKey).toEqual(identity.recoveryKey);
    expect(back.escrow).toBe(identity.escrow);
    expect(back).not.toHaveProperty('recovery');
  });

  it('hands the recovery public key and the escrow to linked devices; reads identities and grants made before them', async () => {
    const first = await createIdentity();
    const linked = await linkNewDevice(first);
    expect(linked.recoveryKey).toEqual(first.recoveryKey);
    expect(linked.escrow).toBe(first.escrow);
    expect((await parseIdentity(serializeIdentity(linked))).recoveryKey).toEqual(first.recoveryKey);

    // An identity stored before recovery keys: no recoveryKey, no escrow.
    const { recoveryKey: _k, escrow: _e, ...old } = first;
    const parsedOld = await parseIdentity(serializeIdentity(old));
    expect(parsedOld.recoveryKey).toBeUndefined();
    expect(parsedOld.escrow).toBeUndefined();

    // A grant from a device before recovery keys still parses.
    const keys = await createDeviceKeys();
    const grant = authorizeDevice(old, keys.publicKey);
    const payload = GrantPayloadSchema.parse(JSON.parse(new TextDecoder().decode(encodeGrant({ ...grant, epochs: {} }))));
    expect(payload.recoveryKey).toBeUndefined();
    const withKey = GrantPayloadSchema.parse(JSON.parse(new TextDecoder().decode(encodeGrant({ ...authorizeDevice(first, keys.publicKey), epochs: {} }))));
    expect(withKey.recoveryKey).toBe(toB64(first.recoveryKey!));
  });
});
