import { existsSync, readFileSync } from 'node:fs';
import { createIdentity, linkNewDevice } from '@keel/client';
import { afterEach, describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { type Device, connectDevice, waitFor } from '../support/devices.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../support/relay-process.js';

const relays: RelayProcess[] = [];
const devices: Device[] = [];

afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.client.close()));
  for (const r of relays.splice(0)) {
    await r.stop();
    removeRelayDir(r.dir);
  }
});

const relayAt = async (options?: Parameters<typeof startRelayProcess>[0]) => {
  const r = await startRelayProcess(options);
  relays.push(r);
  return r;
};
const device = async (...args: Parameters<typeof connectDevice>) => {
  const d = await connectDevice(...args);
  devices.push(d);
  return d;
};

/** Every file SQLite may have written: the database, its WAL and shared-memory index. */
const databaseBytes = (r: RelayProcess): Buffer =>
  Buffer.concat([r.dbPath, `${r.dbPath}-wal`, `${r.dbPath}-shm`].filter(existsSync).map((p) => readFileSync(p)));

const contains = (haystack: Buffer, needle: string): boolean =>
  haystack.includes(Buffer.from(needle, 'utf8')) || haystack.includes(Buffer.from(needle, 'utf16le'));

describe('the relay never holds plaintext', () => {
  it('stores no marker, document name or class name in its database, WAL or log', async () => {
    const relay = await relayAt();
    const marker = `KEEL-MARKER-${Math.random().toString(36).slice(2)}`;
    const docName = `plan-named-${Math.random().toString(36).slice(2)}`;
    const idA = await createIdentity();
    const a = await device(relay.url, idA);
    const b = await device(relay.url, await linkNewDevice(idA));
    const docA = await a.client.open({ class: 'safety_plan', name: docName });
    const docB = await b.client.open({ class: 'safety_plan', name: docName });
    docA.getText('reasons').insert(0, `${marker} text`);
    docA.getMap('contacts').set(`${marker}-key`, `${marker}-value`);
    docA.getArray('steps').push([`${marker} step`]);
    await a.client.flush();
    await waitFor(() => docB.getText('reasons').toString().includes(marker), 5_000, 'sync to B');

    // While running (recent commits are in the WAL), then after a clean stop (checkpointed).
    for (const phase of ['running', 'stopped']) {
      if (phase === 'stopped') await relay.stop();
      const bytes = databaseBytes(relay);
      expect(bytes.length, phase).toBeGreaterThan(0);
      for (const secret of [marker, docName, 'safety_plan', 'reasons', 'contacts']) {
        expect(contains(bytes, secret), `${secret} in database (${phase})`).toBe(false);
      }
    }
    for (const secret of [marker, docName, 'safety_plan']) expect(relay.output()).not.toContain(secret);
  });
});

describe('durability', () => {
  it('keeps every acknowledged update through kill -9 and serves it after restart', async () => {
    const first = await relayAt();
    const idA = await createIdentity();
    const a = await device(first.url, idA);
    const docA = await a.client.open({ class: 'mood', name: 'journal' });
    for (let i = 0; i < 60; i++) {
      docA.getArray('entries').push([`entry-${i}`]);
      // Some acknowledged one by one, some in groups.
      if (i % 3 === 0) await a.client.flush();
    }
    await a.client.flush();
    const allAcked = docA.getArray('entries').toArray() as string[];
    // The acknowledgment has reached the device: kill the relay at once, no shutdown path.
    await first.kill9();
    expect(first.output()).not.toContain('"msg":"stopped"');
    await a.client.close();

    const second = await relayAt({ dir: first.dir });
    const b = await device(second.url, await linkNewDevice(idA));
    const docB = await b.client.open({ class: 'mood', name: 'journal' });
    await b.client.whenSynced();
    expect(docB.getArray('entries').toArray()).toEqual(allAcked);
    expect(allAcked).toHaveLength(60);
    expect(b.errors).toEqual([]);
  });

  it('loses nothing when the relay is killed while a device keeps writing', async () => {
    const first = await relayAt();
    const port = first.port;
    const idA = await createIdentity();
    const a = await device(first.url, idA);
    const docA = await a.client.open({ class: 'checkin', name: 'daily' });
    await a.client.whenSynced();
    for (let i = 0; i < 20; i++) docA.getMap('m').set(`before-${i}`, i);
    await a.client.flush();
    await first.kill9();
    // Written while the relay is down: kept in A's outbox and resent after reconnect.
    for (let i = 0; i < 20; i++) docA.getMap('m').set(`during-${i}`, i);
    await waitFor(() => a.client.status === 'offline', 5_000, 'A notices the outage');

    const second = await relayAt({ dir: first.dir, port });
    await a.client.flush();
    const b = await device(second.url, await linkNewDevice(idA));
    const docB = await b.client.open({ class: 'checkin', name: 'daily' });
    await waitFor(() => docB.getMap('m').size === 40, 5_000, 'all 40 entries at B');
    expect(Y.encodeStateAsUpdate(docB)).toEqual(Y.encodeStateAsUpdate(docA));
  });
});
