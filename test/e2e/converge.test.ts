import { createIdentity, linkNewDevice } from '@keel/client';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { type Device, connectDevice, waitFor } from '../support/devices.js';
import { type NetworkProxy, startProxy } from '../support/proxy.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../support/relay-process.js';

let relay: RelayProcess;
const devices: Device[] = [];
const proxies: NetworkProxy[] = [];

beforeEach(async () => {
  relay = await startRelayProcess();
});

afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.client.close()));
  await Promise.all(proxies.splice(0).map((p) => p.close()));
  await relay.stop();
  removeRelayDir(relay.dir);
});

const device = async (...args: Parameters<typeof connectDevice>) => {
  const d = await connectDevice(...args);
  devices.push(d);
  return d;
};

const stateOf = (doc: Y.Doc) => Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64');

/** Two devices of one user, both synced on the given document. */
const pair = async (docName = 'main', urlB?: string) => {
  const idA = await createIdentity();
  const a = await device(relay.url, idA);
  const docA = await a.client.open({ class: 'safety_plan', name: docName });
  await a.client.whenSynced();
  const b = await device(urlB ?? relay.url, await linkNewDevice(idA));
  const docB = await b.client.open({ class: 'safety_plan', name: docName });
  await b.client.whenSynced();
  return { a, b, docA, docB };
};

describe('two devices of one user', () => {
  it('converge byte-for-byte after concurrent text, map and array edits', async () => {
    const { a, b, docA, docB } = await pair();
    docA.getText('reasons').insert(0, 'my dog');
    docB.getText('reasons').insert(0, 'my sister ');
    docA.getMap('contacts').set('sister', '555-0100');
    docB.getMap('contacts').set('therapist', '555-0199');
    docA.getArray('steps').push(['walk']);
    docB.getArray('steps').push(['breathe']);
    await Promise.all([a.client.flush(), b.client.flush()]);
    await waitFor(() => stateOf(docA) === stateOf(docB), 5_000, 'convergence');

    expect(docA.getMap('contacts').toJSON()).toEqual({ sister: '555-0100', therapist: '555-0199' });
    expect(docA.getArray('steps').toArray().sort()).toEqual(['breathe', 'walk']);
    expect(docA.getText('reasons').toString()).toHaveLength('my dog'.length + 'my sister '.length);
    expect(a.errors).toEqual([]);
    expect(b.errors).toEqual([]);
  });

  it('converge on several documents of different classes', async () => {
    const idA = await createIdentity();
    const a = await device(relay.url, idA);
    const b = await device(relay.url, await linkNewDevice(idA));
    const specs = [
      { class: 'profile', name: 'me' },
      { class: 'checkin', name: '2026-11-25' },
      { class: 'assessment', name: 'phq9-1' },
    ] as const;
    const docsA = await Promise.all(specs.map((s) => a.client.open(s)));
    const docsB = await Promise.all(specs.map((s) => b.client.open(s)));
    docsA.forEach((d, i) => d.getMap('m').set('from-a', i));
    docsB.forEach((d, i) => d.getArray('l').push([`from-b-${i}`]));
    await Promise.all([a.client.flush(), b.client.flush()]);
    await waitFor(() => docsA.every((d, i) => stateOf(d) === stateOf(docsB[i]!)), 5_000, 'convergence of every document');
    expect(docsB[2]!.getMap('m').get('from-a')).toBe(2);
  });

  it('converge after edits made while one device was offline', async () => {
    const proxy = await startProxy(relay.port);
    proxies.push(proxy);
    const { a, b, docA, docB } = await pair('offline', proxy.url);
    docA.getText('t').insert(0, 'before ');
    await a.client.flush();
    await waitFor(() => docB.getText('t').toString() === 'before ', 5_000, 'initial sync');

    proxy.setOffline(true);
    await waitFor(() => b.client.status === 'offline', 5_000, 'device B offline');
    for (let i = 0; i < 50; i++) docB.getArray('offline-b').push([i]);
    docB.getText('t').insert(0, 'B-offline ');
    docA.getText('t').insert(docA.getText('t').length, 'A-online');
    docA.getMap('m').set('k', 'a');
    await a.client.flush();
    expect(docB.getMap('m').get('k')).toBeUndefined();

    proxy.setOffline(false);
    await b.client.flush();
    await waitFor(() => stateOf(docA) === stateOf(docB), 10_000, 'convergence after reconnect');
    expect(docA.getArray('offline-b').length).toBe(50);
    expect(docB.getMap('m').get('k')).toBe('a');
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('converge for random concurrent edit sequences (property, real relay)', async () => {
    const { a, b, docA, docB } = await pair('property');
    const op = fc.record({
      onA: fc.boolean(),
      kind: fc.constantFrom('text', 'map', 'array', 'delete'),
      pos: fc.nat(50),
      value: fc.string({ maxLength: 8 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 30 }), async (ops) => {
        for (const o of ops) {
          const doc = o.onA ? docA : docB;
          const text = doc.getText('t');
          if (o.kind === 'text') text.insert(Math.min(o.pos, text.length), o.value);
          else if (o.kind === 'map') doc.getMap('m').set(o.value, o.pos);
          else if (o.kind === 'array') doc.getArray('a').insert(Math.min(o.pos, doc.getArray('a').length), [o.value]);
          else if (text.length > 0) text.delete(Math.min(o.pos, text.length - 1), 1);
        }
        await Promise.all([a.client.flush(), b.client.flush()]);
        await waitFor(() => stateOf(docA) === stateOf(docB), 5_000, 'convergence');
      }),
      { seed: 42, numRuns: 15 },
    );
    expect([...a.errors, ...b.errors]).toEqual([]);
  });
});
