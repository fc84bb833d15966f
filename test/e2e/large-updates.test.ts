import { randomBytes } from 'node:crypto';
import { createIdentity, linkNewDevice } from '@keel/client';
import * as Y from 'yjs';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { errorLinesBesidesCrisisAlerts } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const same = (x: Uint8Array, y: Uint8Array): boolean => Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength));

/**
 * Updates larger than the relay's frame limit travel as several envelopes (parts bound to their
 * index and count in the signed, authenticated header) and are applied only when complete.
 */
describe('large updates', () => {
  const scope = useTestScope();

  for (const maxPayload of [1024 * 1024, 64 * 1024]) {
    it(`a 6 MiB update crosses a relay with ${maxPayload / 1024} KiB frames in parts and arrives byte for byte`, async () => {
      const relay = await scope.relay({ args: ['--max-payload', String(maxPayload)] });
      const identity = await createIdentity();
      const a = await scope.device(relay.url, identity);
      const b = await scope.device(relay.url, await linkNewDevice(identity));
      const docA = await a.client.open({ class: 'history', name: 'archive' });
      const docB = await b.client.open({ class: 'history', name: 'archive' });
      await Promise.all([a.client.whenSynced(), b.client.whenSynced()]);
      const blob = new Uint8Array(randomBytes(6 * 1024 * 1024));
      docA.getMap('files').set('blob', blob);
      docA.getText('note').insert(0, 'after the blob');
      await a.client.flush();
      await waitFor(() => docB.getText('note').toString() === 'after the blob', 20_000, 'the update on B');
      // Compared as buffers: a deep equality over 6 MiB element by element takes minutes.
      expect(same(docB.getMap('files').get('blob') as Uint8Array, blob)).toBe(true);
      expect(same(Y.encodeStateAsUpdate(docB), Y.encodeStateAsUpdate(docA))).toBe(true);
      expect([...a.errors, ...b.errors]).toEqual([]);
      // The relay never saw a frame over its limit: it stored the update in parts.
      expect(errorLinesBesidesCrisisAlerts(relay.output())).toEqual([]);
      // And a third device catching up from the log gets the same bytes.
      const c = await scope.device(relay.url, await linkNewDevice(identity));
      const docC = await c.client.open({ class: 'history', name: 'archive' });
      await c.client.whenSynced();
      expect(same(Y.encodeStateAsUpdate(docC), Y.encodeStateAsUpdate(docA))).toBe(true);
    });
  }
});
