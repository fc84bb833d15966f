import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type Identity, createIdentity, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { type Device, waitFor } from '../support/devices.js';
import { runRelayCli } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

const WRITERS = 20;
/** Each writer's loop is bounded: at most this many acknowledged updates, and it stops when told. */
const MAX_UPDATES = 200;

interface Writer {
  readonly identity: Identity;
  readonly device: Device;
  /** Updates the relay acknowledged (flush resolved), in order: 0, 1, 2… */
  acked: number;
  done: Promise<void>;
}

describe('keel-relay backup', () => {
  it('copies a serving relay while 20 devices write; every update acknowledged before it started is in the restored copy', async () => {
    const relay = await scope.relay();
    const writers: Writer[] = [];
    for (let i = 0; i < WRITERS; i++) {
      const identity = await createIdentity();
      writers.push({ identity, device: await scope.device(relay.url, identity), acked: 0, done: Promise.resolve() });
    }
    let stop = false;
    for (const w of writers) {
      w.done = (async () => {
        const doc = await w.device.client.open({ class: 'mood', name: 'log' });
        for (let n = 0; n < MAX_UPDATES && !stop; n++) {
          doc.getArray('l').push([n]);
          await w.device.client.flush();
          w.acked = n + 1;
        }
      })();
    }
    // Writing is under way on every device before the backup starts.
    await waitFor(() => writers.every((w) => w.acked >= 3), 20_000, 'every writer to have updates acknowledged');

    const backup = join(relay.dir, 'backup.db');
    const ackedBefore = writers.map((w) => w.acked);
    const result = await runRelayCli(['backup', '--to', backup, '--db', relay.dbPath]);
    const ackedAfter = writers.map((w) => w.acked);
    stop = true;
    await Promise.all(writers.map((w) => w.done));
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('audit trail OK');
    expect(statSync(backup).mode & 0o777).toBe(0o600);
    // The serving relay's own files, created by the relay process under its ordinary umask.
    for (const file of [relay.dbPath, `${relay.dbPath}-wal`, `${relay.dbPath}-shm`]) expect(statSync(file).mode & 0o777, file).toBe(0o600);
    // The writers did not pause for the backup: it ran while they wrote.
    expect(ackedAfter.some((n, i) => n > ackedBefore[i]!), 'updates acknowledged during the backup').toBe(true);

    // Restore into a new file, which audit verify accepts.
    const restoredDb = join(relay.dir, 'restored', 'relay.db');
    mkdirSync(join(relay.dir, 'restored'));
    const restore = await runRelayCli(['restore', '--from', backup, '--db', restoredDb]);
    expect(restore.stderr).toBe('');
    expect(restore.code).toBe(0);
    expect(statSync(restoredDb).mode & 0o777).toBe(0o600);
    const verify = await runRelayCli(['audit', 'verify', '--db', restoredDb]);
    expect(verify.code).toBe(0);
    // Restore never writes over a database.
    const again = await runRelayCli(['restore', '--from', backup, '--db', restoredDb]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('exists');

    // A relay on the restored copy serves each user's acknowledged updates to a new device of theirs.
    const restored = await scope.relay({ dir: join(relay.dir, 'restored') });
    for (const [i, w] of writers.entries()) {
      const reader = await scope.device(restored.url, await linkNewDevice(w.identity));
      const doc = await reader.client.open({ class: 'mood', name: 'log' });
      const want = ackedBefore[i]!;
      await waitFor(() => doc.getArray('l').length >= want, 10_000, `writer ${i}'s ${want} acknowledged updates`);
      const values = doc.getArray<number>('l').toArray();
      // Every acknowledged update before the backup, in order; later ones may or may not be there.
      expect(values.slice(0, want)).toEqual(Array.from({ length: want }, (_, n) => n));
      await reader.client.close();
    }
  });
});
