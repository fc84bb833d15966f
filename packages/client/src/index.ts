// @keel/client — the SDK apps embed (browser and Node).
export { KeelClient, createClient } from './client.js';
export type { KeelClientOptions } from './client.js';
export type { ClientStatus, ClientError, ClientEvents, DocSpec, KeelClientApi } from './client-api.js';
export type { KeelProvider, ProviderEvents, ProviderStatus } from './provider.js';
export { RELAY_AWARENESS_ORIGIN } from './sync/awareness-sync.js';
export type { SyncStats } from './sync/sync-stats.js';
export type { PairingOffer } from './pairing-host.js';
export type { LocalData } from './storage/local-data.js';
export type { AssessmentResult } from './crisis-mode.js';
export {
  createIdentity,
  createDeviceKeys,
  authorizeDevice,
  acceptDeviceGrant,
  linkNewDevice,
  serializeIdentity,
  parseIdentity,
} from './identity.js';
export type { Identity, NewIdentity, RecoveryWords, DeviceGrant } from './identity.js';
export { recoverDevice, recoverThisDevice, RecoveryError } from './recovery.js';
export type { RecoverDeviceOptions, RecoverThisDeviceOptions } from './recovery.js';
export { createMemoryStore } from './storage/memory-store.js';
// Browser persistence; importing it touches no IndexedDB, only calling it does.
export { openIndexedDbStore } from './storage/indexeddb-store.js';
export type { IndexedDbStoreOptions } from './storage/indexeddb-store.js';
export { createYIndexedDbState } from './storage/y-indexeddb-state.js';
export type { YIndexedDbStateOptions } from './storage/y-indexeddb-state.js';
export type { ExternalDocState } from './sync/doc-sync.js';
export { orderKey } from './storage/client-store.js';
export type { ClientStore, StorageKey, StorageChunk, StorageOp } from './storage/client-store.js';
export { createBackoff } from './transport/backoff.js';
export type { BackoffOptions } from './transport/backoff.js';
export type { LivenessOptions, WebSocketLike } from './transport/relay-link.js';
export { joinWithPairingCode, PairingError } from './pairing.js';
export type { JoinOptions } from './pairing.js';
export { createSessionHandoff, SessionHandoff, PRESENCE_DOC } from './handoff.js';
export type { SessionHandoffOptions, SessionHandoffEvents, SessionDocSpec, PresenceUpdate, RestoredSessionOf } from './handoff.js';
