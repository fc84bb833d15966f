import { existsSync, readFileSync } from 'node:fs';
import { type KeelProvider, createIdentity, linkNewDevice } from '@keel/client';
import { type AwarenessEnvelope, type RelayFrame, fromB64 } from '@keel/engine';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { JOURNAL, awarenessUpdate, rawSubscribed, sealAs } from '../support/awareness.js';
import { type Device, waitFor } from '../support/devices.js';
import { type RawSocket, connectRawDevice, docRef, flipBit, sealFor } from '../support/raw-device.js';
import type { RelayProcess } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

/** A provider on a device, destroyed after the test (before the device closes). */
const providerOn = async (device: Device, spec = JOURNAL): Promise<KeelProvider> => {
  const p = await device.client.provider(spec);
  scope.defer(() => p.destroy());
  return p;
};

/** The states of other clients `p` holds, by client id. */
const remoteStates = (p: KeelProvider) => [...p.awareness.getStates()].filter(([id]) => id !== p.awareness.clientID);

/**
 * Row counts of every table of the relay's database, read-only. The audit trail is left out: its
 * batched rows of the devices' logins and commits land up to 250 ms after the events, and it has
 * no awareness op at all (observe/sync-audit.ts).
 */
const rowCounts = (dbPath: string): Record<string, number> => {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const tables = db.prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'audit' ORDER BY name").all();
    return Object.fromEntries(tables.map(({ name }) => [name, db.prepare<[], { n: number }>(`SELECT count(*) AS n FROM "${name}"`).get()!.n]));
  } finally {
    db.close();
  }
};

const databaseBytes = (r: RelayProcess): Buffer =>
  Buffer.concat([r.dbPath, `${r.dbPath}-wal`, `${r.dbPath}-shm`].filter(existsSync).map((p) => readFileSync(p)));

const awarenessFrames = (raw: RawSocket) => raw.received.filter((f): f is Extract<RelayFrame, { type: 'awareness' }> => f.type === 'awareness');

describe('awareness through the relay', () => {
  it("two devices of one user see each other's cursors; another user's device never does; the relay stores nothing of it", async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA);
    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const stranger = await createIdentity();
    const s = await scope.device(relay.url, stranger);
    const [pA, pB, pS] = [await providerOn(a), await providerOn(b), await providerOn(s)];
    // A raw device of the user, to see the sealed frames the relay forwards; and one of the stranger.
    const rawA = await rawSubscribed(scope, relay.url, await linkNewDevice(idA));
    const rawS = await rawSubscribed(scope, relay.url, await linkNewDevice(stranger));
    // And a stranger's device subscribed to the very id of A's document (ids live in per-user namespaces).
    const squatter = await connectRawDevice(relay.url, await linkNewDevice(stranger));
    scope.defer(() => squatter.close());
    squatter.sendFrame({ type: 'sub', docs: [{ doc: docRef(idA, JOURNAL.class, JOURNAL.name).id, after: 0 }] });
    await squatter.nextOf('synced');
    await Promise.all([a.client.whenSynced(), b.client.whenSynced(), s.client.whenSynced()]);
    const before = rowCounts(relay.dbPath);

    const marker = `KEEL-AWARENESS-${Math.random().toString(36).slice(2)}`;
    pA.awareness.setLocalStateField('user', { name: marker, color: '#30bced' });
    pA.awareness.setLocalStateField('cursor', { anchor: 3, head: 7 });
    pB.awareness.setLocalStateField('user', { name: 'phone', color: '#ee6352' });
    pS.awareness.setLocalStateField('user', { name: 'stranger', color: '#000000' });
    await waitFor(() => remoteStates(pB).some(([, st]) => st.user?.name === marker && st.cursor?.head === 7), 5_000, "A's cursor on B");
    await waitFor(() => remoteStates(pA).some(([, st]) => st.user?.name === 'phone'), 5_000, "B's state on A");
    await waitFor(() => awarenessFrames(rawA).length >= 2, 5_000, 'sealed frames at the raw device');

    // The stranger's devices got nothing of A's, and A's devices nothing of the stranger's.
    expect(remoteStates(pS)).toEqual([]);
    expect(awarenessFrames(rawS).every((f) => f.aw.device === s.client.identity.device.deviceId)).toBe(true);
    expect(awarenessFrames(squatter)).toEqual([]);
    expect(remoteStates(pA).some(([, st]) => st.user?.name === 'stranger')).toBe(false);
    expect(remoteStates(pB).some(([, st]) => st.user?.name === 'stranger')).toBe(false);

    // Nothing stored: no table gained a row, and no sealed awareness byte is in the database or WAL.
    expect(rowCounts(relay.dbPath)).toEqual(before);
    const bytes = databaseBytes(relay);
    for (const frame of awarenessFrames(rawA)) {
      expect(bytes.includes(Buffer.from(fromB64(frame.aw.ct).subarray(0, 32)))).toBe(false);
      expect(bytes.includes(Buffer.from(frame.aw.ct.slice(0, 40)))).toBe(false);
    }
    expect(relay.output()).not.toContain(marker);
    expect(relay.output()).not.toContain(awarenessFrames(rawA)[0]!.aw.ct.slice(0, 40));
    expect([...a.errors, ...b.errors, ...s.errors]).toEqual([]);
  });

  it("round-trips y-prosemirror's cursor fields: relative positions resolve to the same place on the other device", async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA);
    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const [pA, pB] = [await providerOn(a), await providerOn(b)];
    const textA = pA.doc.getXmlFragment('prosemirror');
    const paragraph = new Y.XmlText();
    textA.insert(0, [paragraph]);
    paragraph.insert(0, 'breathe in, breathe out');
    await a.client.flush();
    await waitFor(() => pB.doc.getXmlFragment('prosemirror').length === 1, 5_000, 'text on B');
    // What yCursorPlugin sets: relative positions as JSON, and the user's name and colour.
    const anchor = Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(paragraph, 8));
    const head = Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(paragraph, 11));
    pA.awareness.setLocalStateField('user', { name: 'laptop', color: '#30bced' });
    pA.awareness.setLocalStateField('cursor', { anchor, head });
    await waitFor(() => remoteStates(pB).some(([, st]) => st.cursor !== undefined), 5_000, 'cursor on B');
    const [, state] = remoteStates(pB).find(([, st]) => st.cursor !== undefined)!;
    expect(state.user).toEqual({ name: 'laptop', color: '#30bced' });
    const resolved = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(state.cursor.head), pB.doc);
    expect(resolved?.index).toBe(11);
    expect(String(resolved?.type)).toBe('breathe in, breathe out');
  });

  it('a newly joined device sees existing cursors at once, and a device that leaves takes its cursors with it', async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const a = await scope.device(relay.url, idA);
    const pA = await providerOn(a);
    pA.awareness.setLocalStateField('cursor', { anchor: 1, head: 1 });
    await a.client.whenSynced();
    // B joins after A set its state, and sets none of its own: A answers B's first frame.
    const b = await scope.device(relay.url, await linkNewDevice(idA));
    const pB = await providerOn(b);
    await waitFor(() => remoteStates(pB).some(([, st]) => st.cursor?.head === 1), 5_000, "A's existing cursor on B");
    // (y-protocols never applies a client's initial empty state, clock 0, on other peers: B shows once it sets a field.)
    pB.awareness.setLocalStateField('user', { name: 'phone' });
    await waitFor(() => remoteStates(pA).length === 1, 5_000, "B's state on A");
    const watcher = await rawSubscribed(scope, relay.url, await linkNewDevice(idA));
    // A's client goes away: B drops its states on `awareness-gone`, long before y-protocols' 30 s.
    const closedAt = Date.now();
    await a.client.close();
    const gone = await watcher.nextOf('awareness-gone', 5_000);
    expect(gone.device).toBe(idA.device.deviceId);
    await waitFor(() => remoteStates(pB).length === 0, 5_000, "A's cursor gone from B");
    expect(Date.now() - closedAt).toBeLessThan(5_000);
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('drops tampered, replayed, stale and envelope-as-awareness frames with an error event, applying none', async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const b = await scope.device(relay.url, idA);
    const pB = await providerOn(b);
    // A linked device of the same user, live in B's trust book, speaking raw frames.
    const idRaw = await linkNewDevice(idA);
    const raw = await rawSubscribed(scope, relay.url, idRaw);
    await waitFor(() => b.client.devices().some((c) => c.device === idRaw.device.deviceId), 5_000, 'raw device known to B');
    await b.client.whenSynced();
    const send = (aw: AwarenessEnvelope) => raw.sendFrame({ type: 'awareness', aw });
    const codes = () => b.errors.map((e) => e.code);

    // Tampered ciphertext (the signature no longer matches).
    const good = sealAs(idRaw, awarenessUpdate({ cursor: 'tampered' }, 4242, 1));
    send({ ...good, ct: flipBit(good.ct, 100) });
    await waitFor(() => codes().includes('BAD_SIGNATURE'), 5_000, 'BAD_SIGNATURE');
    // Sealed 31 s ago (a relay replaying old presence).
    send(sealAs(idRaw, awarenessUpdate({ cursor: 'old' }, 4243, 1), Date.now() - 31_000));
    await waitFor(() => codes().includes('STALE'), 5_000, 'STALE (old)');
    // An update envelope's nonce, ciphertext and signature presented as awareness.
    const env = sealFor(idRaw, docRef(idRaw, JOURNAL.class, JOURNAL.name), 1, Y.encodeStateAsUpdate(new Y.Doc()));
    send({ doc: env.doc, epoch: 0, device: env.device, at: Date.now(), nonce: env.nonce, ct: env.ct, sig: env.sig });
    await waitFor(() => codes().filter((c) => c === 'BAD_SIGNATURE').length === 2, 5_000, 'envelope refused as awareness');
    // A valid frame is applied once; the same frame again (a replay within 30 s) is refused.
    const fresh = sealAs(idRaw, awarenessUpdate({ cursor: 'fresh' }, 4244, 1));
    send(fresh);
    await waitFor(() => pB.awareness.getStates().get(4244)?.cursor === 'fresh', 5_000, 'the valid frame applied');
    const stale = codes().filter((c) => c === 'STALE').length;
    send(fresh);
    await waitFor(() => codes().filter((c) => c === 'STALE').length === stale + 1, 5_000, 'STALE (replay)');

    expect(pB.awareness.getStates().has(4242)).toBe(false);
    expect(pB.awareness.getStates().has(4243)).toBe(false);
    expect(remoteStates(pB).map(([id]) => id)).toEqual([4244]);
    // The relay forwards only frames a device seals as itself: one naming another author is refused there.
    const other = await createIdentity();
    send({ ...sealAs(idRaw, awarenessUpdate({ cursor: 'x' })), device: other.device.deviceId });
    const refused = await raw.next((f) => f.type === 'error' && f.code === 'WRONG_AUTHOR');
    expect(refused.type).toBe('error');
  });

  it('is not forwarded on a tier without cross-device sync (presence opens no path the tier closes)', async () => {
    const relay = await scope.relay({ defaultTier: 'trial' });
    const idA = await createIdentity();
    const idSender = await linkNewDevice(idA);
    const sender = await rawSubscribed(scope, relay.url, idSender);
    const watcher = await rawSubscribed(scope, relay.url, await linkNewDevice(idA));
    const plan = docRef(idA, 'safety_plan', 'main');
    watcher.sendFrame({ type: 'sub', docs: [{ doc: plan.id, after: 0 }] });
    await watcher.next((f) => f.type === 'synced' && f.doc === plan.id);
    // Awareness first, then a crisis update (which crosses on every tier), on one socket: had the
    // relay forwarded the awareness, the watcher would hold it before the update arrives.
    sender.sendFrame({ type: 'awareness', aw: sealAs(idSender, awarenessUpdate({ cursor: 'trial' }, 99, 1)) });
    sender.sendFrame({ type: 'push', envs: [sealFor(idSender, plan, 1, Y.encodeStateAsUpdate(new Y.Doc()))] });
    await watcher.next((f) => f.type === 'updates' && f.doc === plan.id, 5_000);
    expect(awarenessFrames(watcher)).toEqual([]);
  });

  it('counts what it drops (past the rate, for a document not subscribed to) and pauses reading a flood', async () => {
    const relay = await scope.inProcessRelay();
    const idA = await createIdentity();
    const idFlood = await linkNewDevice(idA);
    const flooder = await rawSubscribed(scope, relay.url, idFlood);
    const watcher = await rawSubscribed(scope, relay.url, await linkNewDevice(idA));
    // A frame for a document the flooder never subscribed to.
    const other = docRef(idA, 'mood', 'elsewhere');
    flooder.sendFrame({ type: 'awareness', aw: { ...sealAs(idFlood, awarenessUpdate({ cursor: 'x' })), doc: other.id } });
    await waitFor(() => relay.awarenessCounts().dropped.NOT_SUBSCRIBED === 1, 5_000, 'NOT_SUBSCRIBED counted');
    // 300 small frames at once: a burst passes, the rest is dropped and counted; after 60 drops in
    // a row the relay stops reading the socket for a second (the rest waits in TCP buffers).
    const started = Date.now();
    for (let i = 1; i <= 300; i++) flooder.sendFrame({ type: 'awareness', aw: sealAs(idFlood, awarenessUpdate({ cursor: i }, 5, i), Date.now() + i) });
    const seen = () => relay.awarenessCounts().forwarded + relay.awarenessCounts().dropped.RATE_LIMITED;
    await waitFor(() => seen() === 300, 15_000, 'every frame forwarded or dropped');
    const seconds = (Date.now() - started) / 1000;
    const counts = relay.awarenessCounts();
    expect(seconds).toBeGreaterThan(1);
    expect(counts.forwarded).toBeGreaterThanOrEqual(60);
    expect(counts.forwarded).toBeLessThanOrEqual(60 + Math.ceil(30 * (seconds + 1)));
    await waitFor(() => awarenessFrames(watcher).length === counts.forwarded, 5_000, 'forwarded frames at the watcher');
    // Nothing dropped was an error the flooder hears about: awareness is ephemeral.
    expect(flooder.received.filter((f) => f.type === 'error')).toEqual([]);
  });

  it('tells a device whose socket it stopped reading that the link is alive (an unsolicited pong every 2 s), and answers its ping once it reads again', async () => {
    // Paused longer than a client's 5 s ping timeout would allow without the keepalive.
    const relay = await scope.inProcessRelay({ floodPauseMs: 6_000 });
    const id = await createIdentity();
    const flooder = await rawSubscribed(scope, relay.url, id);
    // 60 frames pass as a burst, 60 more are dropped in a row: reading stops for 6 s, with the
    // rest unread in TCP buffers, and a ping sent a little later too.
    for (let i = 1; i <= 130; i++) flooder.sendFrame({ type: 'awareness', aw: sealAs(id, awarenessUpdate({ cursor: i }, 5, i), Date.now() + i) });
    await waitFor(() => relay.awarenessCounts().dropped.RATE_LIMITED >= 60, 5_000, 'the flood dropped');
    const started = Date.now();
    flooder.sendFrame({ type: 'ping', id: 7 });
    await flooder.next((f) => f.type === 'pong' && f.id === 7, 15_000);
    const waited = Date.now() - started;
    const keepalives = flooder.received.filter((f) => f.type === 'pong' && f.id === 0);
    expect(waited).toBeGreaterThan(5_000);
    expect(keepalives.length).toBeGreaterThanOrEqual(2);
    expect(flooder.received.filter((f) => f.type === 'error')).toEqual([]);
  });

  it('shows an unchanged cursor again after the relay restarts (both links dropped and came back)', async () => {
    const relay = await scope.relay();
    const idA = await createIdentity();
    const fast = { liveness: { intervalMs: 200, timeoutMs: 500 } };
    const a = await scope.device(relay.url, idA, undefined, fast);
    const b = await scope.device(relay.url, await linkNewDevice(idA), undefined, fast);
    const [pA, pB] = [await providerOn(a), await providerOn(b)];
    pA.awareness.setLocalStateField('cursor', { anchor: 2, head: 2 });
    await waitFor(() => remoteStates(pB).length === 1, 5_000, "A's cursor on B");
    const port = relay.port;
    await relay.stop();
    // B's link is down: A's cursor is not current any more.
    await waitFor(() => remoteStates(pB).length === 0, 10_000, "A's cursor gone while offline");
    await scope.relay({ dir: relay.dir, port });
    // A announces its (unchanged) state on subscribe; B shows it again without waiting for a change.
    await waitFor(() => remoteStates(pB).some(([, st]) => st.cursor?.head === 2), 10_000, "A's cursor back on B");
  });

  it('closes a connection that floods awareness written otherwise than Keel writes it (each one costs the relay a parse)', async () => {
    const relay = await scope.inProcessRelay();
    const idA = await createIdentity();
    const idFlood = await linkNewDevice(idA);
    const flooder = await rawSubscribed(scope, relay.url, idFlood);
    const sealed = sealAs(idFlood, awarenessUpdate({ cursor: 1 }));
    // `aw` before `type`: the relay cannot drop it by its first bytes, so it reads it, then counts it.
    for (let i = 0; i < 200 && flooder.isOpen; i++) flooder.send(JSON.stringify({ aw: { ...sealed, at: sealed.at + i }, type: 'awareness' }));
    const closed = await flooder.expectClose(5_000);
    expect(closed.code).toBe(4000);
    expect(relay.awarenessCounts().dropped.RATE_LIMITED).toBeGreaterThanOrEqual(32);
  });
});
