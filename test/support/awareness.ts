import type { Identity } from '@keel/client';
import { type AwarenessEnvelope, type DocClass, sealAwareness } from '@keel/engine';
import { Awareness, encodeAwarenessUpdate } from 'y-protocols/awareness';
import * as Y from 'yjs';
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

/** An awareness update for one client at `clock`, as y-protocols encodes it (with a throwaway Awareness). */
export const awarenessUpdate = (state: Record<string, unknown>, clientID = 4242, clock = 1): Uint8Array => {
  const doc = new Y.Doc();
  doc.clientID = clientID;
  const aw = new Awareness(doc);
  // A fresh Awareness starts at clock 0 with a null state; each setLocalState adds one.
  for (let i = 1; i < clock; i++) aw.setLocalState({ i });
  aw.setLocalState(state);
  const update = encodeAwarenessUpdate(aw, [clientID]);
  aw.destroy();
  doc.destroy();
  return update;
};

/** Seals an awareness update for the journal as `identity`'s device would, at `at`. */
export const sealAs = (identity: Identity, update: Uint8Array, at = Date.now()): AwarenessEnvelope => {
  const doc = docRef(identity, JOURNAL.class, JOURNAL.name);
  return sealAwareness({ doc: doc.id, epoch: 0, device: identity.device.deviceId, at }, update, { key: doc.key, signingKey: identity.device.secretKey });
};
