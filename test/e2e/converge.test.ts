import { createIdentity, linkNewDevice } from '@keel/client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { type Device, connectDevice, waitFor } from '../support/devices.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../support/relay-process.js';

let relay: RelayProcess;
const devices: Device[] = [];

beforeEach(async () => {
  relay = await startRelayProcess();
});

afterEach(async () => {
  await Promise.all(devices.splice(0).map((d) => d.client.close()));
  await relay.stop();
  removeRelayDir(relay.dir);
});

const device = async (...args: Parameters<typeof connectDevice>) => {
  const d = await connectDevice(...args);
  devices.push(d);
  return d;
};

const bytesOf = (doc: Y.Doc) => Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64');

describe('two devices of one user', () => {
  it('converge byte-for-byte after concurrent text, map and array edits', async () => {
    const idA = await createIdentity();
    const a = await device(relay.url, idA);
    const docA = await a.client.open({ class: 'safety_plan', name: 'main' });
    await a.client.whenSynced();
    const b = await device(relay.url, await linkNewDevice(idA));
    const docB = await b.client.open({ class: 'safety_plan', name: 'main' });
    await b.client.whenSynced();

    docA.getText('reasons').insert(0, 'my dog');
    docB.getText('reasons').insert(0, 'my sister ');
    docA.getMap('contacts').set('sister', '555-0100');
    docB.getMap('contacts').set('therapist', '555-0199');
    docA.getArray('steps').push(['walk']);
    docB.getArray('steps').push(['breathe']);
    await Promise.all([a.client.flush(), b.client.flush()]);
    await waitFor(() => bytesOf(docA) === bytesOf(docB), 5_000, 'convergence');

    expect(docA.getMap('contacts').toJSON()).toEqual({ sister: '555-0100', therapist: '555-0199' });
    expect(docA.getArray('steps').length).toBe(2);
    expect(a.errors).toEqual([]);
    expect(b.errors).toEqual([]);
  });
});
