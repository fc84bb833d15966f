// The public surface an app uses, whichever object implements it: the real `KeelClient` (Node, or
// the browser tab that leads) or a follower tab's client that forwards to the leader tab.
import type { DeviceCertificate, DeviceId, DocClass, DocId, KeelError, RelayId, TierState } from '@keel/engine';
import type * as Y from 'yjs';
import type { AssessmentResult } from './crisis-mode.js';
import type { Identity } from './identity.js';
import type { PairingOffer } from './pairing-host.js';
import type { DocProvider } from './provider.js';
import type { SyncStats } from './sync/sync-stats.js';

export type ClientStatus = 'connecting' | 'connected' | 'offline' | 'synced' | 'closed';

export type ClientError = KeelError & { readonly doc?: DocId; readonly final?: boolean };

export type ClientEvents = {
  /** Connection and sync state: connecting → connected → synced, offline between attempts. */
  status: (status: ClientStatus) => void;
  /** An integrity failure, a refusal by the relay, or a local storage fault. Nothing bad is applied. */
  error: (error: ClientError) => void;
  /** The relay deferred a document's changes (bandwidth or daily limit); they are resent later. */
  deferred: (info: { readonly doc: DocId; readonly code: string; readonly retryAfterMs: number }) => void;
  /** The user's tier changed (payment, operator); the next scheduling decision follows it. */
  tier: (tier: TierState) => void;
  /** Changes from another device wait for the app to accept them (manual conflict resolution). */
  staged: (info: { readonly doc: DocId; readonly count: number }) => void;
  /** Crisis mode turned on or off, on this device or another of the user's. */
  crisis: (active: boolean) => void;
  /** A device of the user was linked or revoked. */
  devices: (devices: DeviceCertificate[]) => void;
};

export interface DocSpec {
  readonly class: DocClass;
  /** Free-form name within the class; never leaves the device in clear. */
  readonly name: string;
}

/**
 * Keel's client as an app sees it. `createBrowserClient()` returns one without saying whether
 * this tab leads (holds the relay link) or follows (forwards to the tab that does); both behave
 * the same. `provider` joins it once it exists on KeelClient.
 */
export interface KeelClientApi {
  readonly identity: Identity;
  readonly status: ClientStatus;
  /** Local changes sealed but not yet proved in the relay's log. */
  readonly unconfirmed: number;
  /** When the relay last answered (ms since the epoch); undefined before the first answer. */
  readonly lastContactAt: number | undefined;
  readonly tier: TierState;
  readonly crisisMode: boolean;
  readonly relayId: RelayId | undefined;
  on<NAME extends keyof ClientEvents & string>(name: NAME, f: ClientEvents[NAME]): ClientEvents[NAME];
  once<NAME extends keyof ClientEvents & string>(name: NAME, f: ClientEvents[NAME]): void;
  off<NAME extends keyof ClientEvents & string>(name: NAME, f: ClientEvents[NAME]): void;
  /** Opens a document as a live Y.Doc; the same one for the same spec. */
  open(spec: DocSpec): Promise<Y.Doc>;
  /** A y-websocket-shaped handle (doc, awareness, synced, events) on a document. */
  provider(spec: DocSpec): Promise<DocProvider>;
  /** Resolves once every local change made so far is proved in the relay's log. */
  flush(): Promise<void>;
  whenSynced(): Promise<void>;
  close(): Promise<void>;
  setCrisisMode(active: boolean, source?: string): Promise<void>;
  /** Tells the scheduler a therapeutic session (a breathing exercise) runs on this device. */
  setTherapeuticSession(active: boolean): void;
  /** The opaque id the relay knows a document by. */
  docId(spec: DocSpec): DocId;
  recordAssessment(name: string, input: unknown): Promise<AssessmentResult>;
  devices(): DeviceCertificate[];
  startPairing(options?: { ttlMs?: number }): Promise<PairingOffer>;
  revokeDevice(device: DeviceId): Promise<number>;
  stagedCount(spec: DocSpec): number;
  acceptStaged(spec: DocSpec): Promise<number>;
  /** Outbox depth and, per class, the last time from a local change to the relay's ack (contract 4). */
  stats(): SyncStats;
  /** Closes the client; with `wipe`, removes every local store of this device (contract 3). */
  signOut(options?: { readonly wipe?: boolean }): Promise<void>;
  /** Whether the platform agreed to keep the data (browsers: `navigator.storage.persist()`). */
  readonly storagePersisted: boolean | undefined;
}
