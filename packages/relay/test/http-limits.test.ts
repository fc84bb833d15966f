import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RelayConfigSchema } from '../src/config.js';
import { silentLogger } from '../src/log.js';
import { type Relay, startRelay } from '../src/server/relay-server.js';
import { openSqliteStore } from '../src/storage/sqlite-store.js';

let relay: Relay | undefined;
let dir: string | undefined;

afterEach(async () => {
  await relay?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
  relay = undefined;
  dir = undefined;
});

describe('HTTP body limits', () => {
  it('answers an endless chunked body with 413 and closes instead of reading it all', async () => {
    dir = mkdtempSync(join(tmpdir(), 'keel-http-'));
    const config = RelayConfigSchema.parse({ port: 0, db: join(dir, 'relay.db'), adminToken: 'a'.repeat(32) });
    relay = await startRelay({ config, store: openSqliteStore({ path: config.db }), log: silentLogger });
    const { port } = relay.address;
    const chunk = Buffer.alloc(4096, 0x20);
    let written = 0;
    const response = await new Promise<{ status: number; connection: string | undefined }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/admin/tier', headers: { authorization: `Bearer ${'a'.repeat(32)}` } });
      req.on('response', (res) => {
        resolve({ status: res.statusCode ?? 0, connection: res.headers.connection });
        res.resume();
        req.destroy();
      });
      req.on('error', (error) => (written > 0 ? undefined : reject(error)));
      // Up to 64 MiB, far more than the relay should ever read; stops once the answer is in.
      const pump = () => {
        while (written < 64 * 1024 * 1024 && !req.destroyed) {
          written += chunk.length;
          if (!req.write(chunk)) return void req.once('drain', pump);
        }
      };
      pump();
    });
    expect(response.status).toBe(413);
    expect(response.connection).toBe('close');
    expect(written).toBeLessThan(64 * 1024 * 1024);
  });
});
