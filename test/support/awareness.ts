import type { Identity } from '@keel/client';
import { type AwarenessEnvelope, type DocClass, sealAwareness } from '@keel/engine';
import * as encoding from 'lib0/encoding';
import { type RawSocket, connectRawDevice, docRef } from './raw-device.js';
import type { TestScope } from './scope.js';

/** The document awareness tests share cursors in. */
export const JOURNAL = { class: 'mood', name: 'journal' } as const satisfies { class: DocClass; name: string };

/** A raw, authenticated device of `identity`'s user, subscribed to the journal; closed after the test. */
export const rawSubscribed = async (scope: TestScope, url: string, identity: Identity): Promise<RawSocket> => {
  const raw = await connectRawDevice(url, identity);
  scope.defer(() => raw.close());
  raw.sendFrame({ type: 'sub', docs: [{ doc: docRef(identity, JOURNAL.class, JOURNAL.name).id, after: 0 }] });
  await raw.nextOf('synced');
  return raw;
};

/**
 * An awareness update for one client at `clock`, in y-protocols' encoding (a count, then per
 * client its id, clock and JSON state), written directly so a flood costs the test little.
 */
export const awarenessUpdate = (state: Record<string, unknown>, clientID = 4242, clock = 1): Uint8Array => {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, 1);
  encoding.writeVarUint(encoder, clientID);
  encoding.writeVarUint(encoder, clock);
  encoding.writeVarString(encoder, JSON.stringify(state));
  return encoding.toUint8Array(encoder);
};

/** Seals an awareness update for the journal as `identity`'s device would, at `at`. */
export const sealAs = (identity: Identity, update: Uint8Array, at = Date.now()): AwarenessEnvelope => {
  const doc = docRef(identity, JOURNAL.class, JOURNAL.name);
  return sealAwareness({ doc: doc.id, epoch: 0, device: identity.device.deviceId, at }, update, { key: doc.key, signingKey: identity.device.secretKey });
};
