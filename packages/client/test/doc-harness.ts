import {
  type DeviceId,
  type DocClass,
  type DocId,
  type Envelope,
  type KeelError,
  basePriority,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  sealEnvelope,
} from '@keel/engine';
import * as Y from 'yjs';
import { type Identity, createIdentity, linkNewDevice } from '../src/identity.js';
import type { ClientStore } from '../src/storage/client-store.js';
import { DocSync } from '../src/sync/doc-sync.js';
import { type PartsBudget, createPartsBudget } from '../src/sync/split-updates.js';

/** One open DocSync with real keys and a real store; the relay's side is played by the test. */
export interface Harness {
  readonly sync: DocSync;
  readonly errors: KeelError[];
  /** `lastSeq` at each request to fetch the log again in full. */
  readonly refetches: number[];
}

export const open = async (
  identity: Identity,
  peers: readonly Identity[],
  store: ClientStore,
  docId: DocId,
  key: Uint8Array,
  docClass: DocClass = 'safety_plan',
  parts: PartsBudget = createPartsBudget(),
): Promise<Harness> => {
  const errors: KeelError[] = [];
  const refetches: number[] = [];
  const keys = new Map<DeviceId, Uint8Array>(peers.map((p) => [p.device.deviceId, p.device.publicKey]));
  const sync = await DocSync.load(docId, docClass, 'main', {
    store,
    identity,
    keys: { current: () => ({ epoch: 0, key }), get: (epoch) => (epoch === 0 ? key : undefined) },
    peerKey: (device) => keys.get(device),
    nonLive: () => new Set<DeviceId>(),
    onPending: () => {},
    shouldStage: () => false,
    compress: () => false,
    partBytes: () => 1 << 20,
    maxInflatedBytes: () => 2 << 20,
    overBudget: () => {},
    parts,
    onStaged: () => {},
    onProgress: () => {},
    onRefetch: (s) => refetches.push(s.lastSeq),
    onError: (error) => errors.push(error),
    onCrisisApplied: () => {},
    onLaneMismatch: () => {},
  });
  return { sync, errors, refetches };
};

/** A self-contained update setting m[k] = v (its own Yjs client id). */
export const mapUpdate = (k: string, v: unknown): Uint8Array => {
  const doc = new Y.Doc();
  doc.getMap('m').set(k, v);
  return Y.encodeStateAsUpdate(doc);
};

export const setup = async (docClass: DocClass = 'safety_plan') => {
  const a = await createIdentity();
  const b = await linkNewDevice(a);
  const docId = deriveDocId(a.user.docIdKey, docClass, 'main');
  const key = deriveDocKey(deriveEpochZeroSecret(a.user.rootKey), docId, 0);
  const lane = basePriority(docClass);
  const sealBy = (who: Identity, counter: number, payload: Uint8Array): Envelope =>
    sealEnvelope({ doc: docId, kind: 'update', epoch: 0, device: who.device.deviceId, counter, lane }, payload, { key, signingKey: who.device.secretKey });
  return { a, b, docId, key, lane, sealBy };
};

/** Writes locally and seals it, as the dispatcher would; returns the sealed envelopes. */
export const writeAndSeal = async (h: Harness, k: string, v: unknown): Promise<Envelope[]> => {
  h.sync.doc.getMap('m').set(k, v);
  await h.sync.settle();
  return h.sync.seal(h.sync.baseLane);
};

