import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClientStore, Identity } from '@keel/client';
import { type AwarenessLimits, type Relay, RelayConfigSchema, openSqliteStore, silentLogger, startRelay } from '@keel/relay';
import { afterEach } from 'vitest';
import { type Device, connectDevice } from './devices.js';
import { type RelayProcess, type RelayProcessOptions, removeRelayDir, startRelayProcess } from './relay-process.js';

/** What a test opened, closed after it in reverse order — pass or fail. */
export interface TestScope {
  /** Runs `cleanup` after the test (last registered, first run). */
  defer(cleanup: () => Promise<void> | void): void;
  /** A real relay process, stopped and its temp dir removed after the test. */
  relay(options?: RelayProcessOptions): Promise<RelayProcess>;
  /**
   * A relay in this process, on premium and a temporary SQLite file, for a test that reads its
   * event bus or counters; closed and its file removed after the test.
   */
  inProcessRelay(awarenessLimits?: Partial<AwarenessLimits>): Promise<Relay>;
  /** A connected client device, closed after the test. */
  device(url: string, identity: Identity, store?: ClientStore, options?: Parameters<typeof connectDevice>[3]): Promise<Device>;
}

/** Registers an afterEach that closes everything a test opened through the returned scope. */
export const useTestScope = (): TestScope => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  const defer = (cleanup: () => Promise<void> | void) => {
    cleanups.push(cleanup);
  };
  return {
    defer,
    async relay(options) {
      const relay = await startRelayProcess(options);
      defer(async () => {
        await relay.stop();
        removeRelayDir(relay.dir);
      });
      return relay;
    },
    async inProcessRelay(awarenessLimits = {}) {
      const dir = mkdtempSync(join(tmpdir(), 'keel-relay-'));
      defer(() => rmSync(dir, { recursive: true, force: true }));
      const config = RelayConfigSchema.parse({ port: 0, host: '127.0.0.1', db: join(dir, 'relay.db'), defaultTier: 'premium' });
      const relay = await startRelay({ config, store: openSqliteStore({ path: config.db }), log: silentLogger, awarenessLimits });
      defer(() => relay.close());
      return relay;
    },
    async device(url, identity, store, options) {
      const d = await connectDevice(url, identity, store, options);
      defer(() => d.client.close());
      return d;
    },
  };
};
