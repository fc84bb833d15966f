// @keel/relay — the server: device auth, durable ciphertext log, fan-out.
export { startRelay } from './server/relay-server.js';
export type { Relay, RelayDeps } from './server/relay-server.js';
export type { AwarenessLimits } from './server/awareness-gate.js';
export { READ_BYTES_PER_TURN } from './server/read-turns.js';
export { RelayConfigSchema, ENV_VARS } from './config.js';
export type { RelayConfig, RelayConfigInput } from './config.js';
export { openSqliteStore } from './storage/sqlite-store.js';
export type { SqliteStoreOptions, Synchronous } from './storage/sqlite-store.js';
export type { RelayStore, DeviceRecord, LogEntry, AppendRequest, AppendOutcome } from './storage/relay-store.js';
export { createJsonLogger, silentLogger } from './log.js';
export type { Logger, LogLevel, LogFields } from './log.js';
export type { RelayEvents, RelayEventMap, RelayEventName, RelayEventListener, ConnId } from './events/relay-events.js';
export type { RelayMetrics } from './observe/metrics.js';
