import { type KeelProvider, type ProviderStatus, createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { describe, expect, it } from 'vitest';
import { JOURNAL } from '../support/awareness.js';
import { waitFor } from '../support/devices.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

/** Records a provider's y-websocket-shaped events in order. */
const record = (p: KeelProvider) => {
  const events: string[] = [];
  p.on('status', ({ status }: { status: ProviderStatus }) => events.push(`status:${status}`));
  p.on('sync', (synced: boolean) => events.push(`sync:${synced}`));
  p.on('synced', (synced: boolean) => events.push(`synced:${synced}`));
  return events;
};

describe('client.provider: a y-websocket-shaped handle', () => {
  it('fires status and sync events as y-websocket does, through a relay restart', async () => {
    const relay = await scope.relay();
    const id = await createIdentity();
    const a = await scope.device(relay.url, id, createMemoryStore(), { liveness: { intervalMs: 200, timeoutMs: 500 } });
    const p = await a.client.provider(JOURNAL);
    scope.defer(() => p.destroy());
    const events = record(p);
    await waitFor(() => p.synced, 5_000, 'provider synced');
    expect(p.wsconnected).toBe(true);
    const port = relay.port;
    await relay.stop();
    await waitFor(() => events.includes('status:disconnected'), 10_000, 'disconnected');
    expect(p.synced).toBe(false);
    expect(events).toContain('sync:false');
    const again = await scope.relay({ dir: relay.dir, port });
    expect(again.url).toBe(relay.url);
    await waitFor(() => p.synced, 10_000, 'synced again');
    expect(events.slice(events.lastIndexOf('status:disconnected'))).toEqual(
      expect.arrayContaining(['status:connected', 'sync:true', 'synced:true']),
    );
    // Events come in y-websocket's pairs: every sync has its synced.
    expect(events.filter((e) => e.startsWith('sync:')).map((e) => e.slice(5))).toEqual(events.filter((e) => e.startsWith('synced:')).map((e) => e.slice(7)));
  });

  it('hands out one live doc and awareness per document; the last destroy() closes it, and reopening loses nothing', async () => {
    const relay = await scope.relay();
    const id = await createIdentity();
    const a = await scope.device(relay.url, id);
    const b = await scope.device(relay.url, await linkNewDevice(id));
    const pB = await b.client.provider(JOURNAL);
    scope.defer(() => pB.destroy());
    const p1 = await a.client.provider(JOURNAL);
    const p2 = await a.client.provider(JOURNAL);
    expect(p2.doc).toBe(p1.doc);
    expect(p2.awareness).toBe(p1.awareness);
    p1.awareness.setLocalStateField('cursor', { anchor: 0, head: 0 });
    await waitFor(() => pB.awareness.getStates().has(p1.awareness.clientID), 5_000, "A's cursor on B");

    // One handle goes: the document stays open and keeps syncing through the other.
    await p1.destroy();
    expect(p2.doc.isDestroyed).toBe(false);
    p2.doc.getText('entry').insert(0, 'first ');
    await waitFor(() => pB.doc.getText('entry').toString() === 'first ', 5_000, 'first edit on B');

    // The last handle goes right after an edit, without a flush: the edit is stored, not lost.
    p2.doc.getText('entry').insert(6, 'second');
    const oldDoc = p2.doc;
    await p2.destroy();
    expect(oldDoc.isDestroyed).toBe(true);
    // Its cursor left B at once (a null state), not after 30 s.
    await waitFor(() => !pB.awareness.getStates().has(p1.awareness.clientID), 5_000, "A's cursor gone from B");

    const p3 = await a.client.provider(JOURNAL);
    scope.defer(() => p3.destroy());
    expect(p3.doc).not.toBe(oldDoc);
    expect(p3.doc.getText('entry').toString()).toBe('first second');
    await a.client.flush();
    await waitFor(() => pB.doc.getText('entry').toString() === 'first second', 5_000, 'second edit on B');
    // Edits after reopening sync as before.
    p3.doc.getText('entry').insert(0, '> ');
    await waitFor(() => pB.doc.getText('entry').toString() === '> first second', 5_000, 'edit after reopen on B');
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('a handle on a document already caught up reports status and sync right after it is created', async () => {
    const relay = await scope.relay();
    const a = await scope.device(relay.url, await createIdentity());
    const first = await a.client.provider(JOURNAL);
    scope.defer(() => first.destroy());
    await waitFor(() => first.synced, 5_000, 'first handle synced');
    const second = await a.client.provider(JOURNAL);
    scope.defer(() => second.destroy());
    const events = record(second);
    await waitFor(() => events.includes('synced:true'), 2_000, 'synced on the second handle');
    expect(events).toEqual(['status:connected', 'sync:true', 'synced:true']);
    expect(second.synced).toBe(true);
  });

  it('keeps a document the app opened with open() open when its providers are destroyed', async () => {
    const relay = await scope.relay();
    const a = await scope.device(relay.url, await createIdentity());
    const doc = await a.client.open(JOURNAL);
    const p = await a.client.provider(JOURNAL);
    expect(p.doc).toBe(doc);
    await p.destroy();
    expect(doc.isDestroyed).toBe(false);
    doc.getMap('m').set('k', 1);
    await a.client.flush();
    expect(a.client.unconfirmed).toBe(0);
  });
});
