import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { type Identity, createIdentity, linkNewDevice } from '@keel/client';
import {
  DEFAULT_TIERS,
  type DeviceCertificate,
  type DocId,
  type Envelope,
  ErrorCode,
  type HelloFrame,
  PROTOCOL_VERSION,
  RelayIdSchema,
  asSeq,
  certifyFirstDevice,
  createChallengeNonce,
  encodeFrame,
  fromB64,
  openEnvelope,
  parseClientFrame,
  verifyChallenge,
} from '@keel/engine';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type WebSocket, WebSocketServer } from 'ws';
import * as Y from 'yjs';
import { type Device, connectDevice, waitFor } from '../support/devices.js';
import {
  type DocRef,
  type RawSocket,
  connectRawDevice,
  docOwners,
  docRef,
  flipBit,
  logRowsByDevice,
  mapUpdate,
  resignEnvelope,
  sealFor,
  strangerKeys,
} from '../support/raw-device.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../support/relay-process.js';

/**
 * Attacks on sealed envelopes. The relay must refuse, with the exact code and before storing
 * anything, what it can check (signature, author, counter, owner); a device must refuse what
 * only it can check (decryption, certificates, gaps a relay left, envelopes moved between
 * documents) when the relay itself is hostile.
 */

const sockets: RawSocket[] = [];
const devices: Device[] = [];
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  await Promise.all(sockets.splice(0).map((s) => s.close()));
  await Promise.all(devices.splice(0).map((d) => d.client.close()));
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const rawDevice = async (url: string, identity: Identity): Promise<RawSocket> => {
  const socket = await connectRawDevice(url, identity);
  sockets.push(socket);
  return socket;
};

const device = async (url: string, identity: Identity): Promise<Device> => {
  const d = await connectDevice(url, identity);
  devices.push(d);
  return d;
};

const mapOf = (doc: Y.Doc) => doc.getMap('m').toJSON();

describe('attacks the relay detects', () => {
  let relay: RelayProcess;
  /** The user under attack: raw device R pushes (and tampers with) envelopes, H is an honest client. */
  let idR: Identity;
  let idH: Identity;
  let R: RawSocket;
  let H: Device;
  let docH: Y.Doc;
  /** What R's pushes and H's deliveries add up to, as R sees it. */
  let docR: Y.Doc;
  let main: DocRef;
  let counter: number;
  let pulled: number;

  beforeEach(async () => {
    relay = await startRelayProcess();
    cleanups.push(async () => {
      await relay.stop();
      removeRelayDir(relay.dir);
    });
    idR = await createIdentity();
    idH = await linkNewDevice(idR);
    main = docRef(idR, 'safety_plan', 'main');
    counter = 0;
    pulled = 0;
    docR = new Y.Doc();
    cleanups.push(async () => docR.destroy());
    R = await rawDevice(relay.url, idR);
    R.sendFrame({ type: 'sub', docs: [{ doc: main.id, after: 0 }] });
    await R.nextOf('synced');
    H = await device(relay.url, idH);
    docH = await H.client.open({ class: 'safety_plan', name: 'main' });
    await H.client.whenSynced();
    await pushLegit('r1');
  });

  /** R seals, pushes and gets acknowledged its next update, setting m[key]. */
  const pushLegit = async (key: string): Promise<{ env: Envelope; seq: number }> => {
    const update = mapUpdate(key, counter + 1);
    const env = sealFor(idR, main, ++counter, update);
    R.sendFrame({ type: 'push', envs: [env] });
    const ack = await R.nextOf('ack');
    expect(ack.acks).toEqual([{ doc: main.id, counter: env.counter, seq: expect.any(Number) }]);
    Y.applyUpdate(docR, update);
    return { env, seq: ack.acks[0]!.seq };
  };

  /** Pushes `env` as R and expects exactly `code` back for it. */
  const expectReject = async (env: Envelope, code: ErrorCode, socket: RawSocket = R) => {
    socket.sendFrame({ type: 'push', envs: [env] });
    const reject = await socket.next((f) => f.type === 'reject' || f.type === 'ack');
    expect(reject).toMatchObject({ type: 'reject', doc: env.doc, counter: env.counter, code });
  };

  /** Applies what the relay delivered to R from H (verified and decrypted, as a device would). */
  const pullIntoR = (): void => {
    for (; pulled < R.received.length; pulled++) {
      const frame = R.received[pulled]!;
      if (frame.type !== 'updates' || frame.doc !== main.id) continue;
      for (const item of frame.items) {
        // R never asks with `proof`, so H's entries all come whole.
        if (!('env' in item)) throw new Error(`a stub for seq ${item.seq} in a catch-up asked without proof`);
        const { env } = item;
        expect(env.device).toBe(idH.device.deviceId);
        const opened = openEnvelope(env, { key: main.key, authorPublicKey: idH.device.publicKey });
        if (!opened.ok) throw new Error(`${opened.error.code}: ${opened.error.message}`);
        Y.applyUpdate(docR, opened.value);
      }
    }
  };

  const rowsOf = (identity: Identity, docId: DocId = main.id) => logRowsByDevice(relay.dbPath, docId, idR.user.userId).get(identity.device.deviceId) ?? 0;

  /** After an attack: both sides keep editing and end with the same content, without the attacker's. */
  const expectHonestConvergence = async () => {
    const { seq } = await pushLegit(`r${counter + 1}`);
    docH.getMap('m').set('h', seq);
    await H.client.flush();
    await waitFor(() => docH.getMap('m').has(`r${counter}`), 3_000, 'R’s update on H');
    await waitFor(() => (pullIntoR(), docR.getMap('m').get('h') === seq), 3_000, 'H’s update on R');
    expect(mapOf(docH)).toEqual(mapOf(docR));
    expect(Object.keys(mapOf(docH)).filter((k) => k.startsWith('evil'))).toEqual([]);
    expect(H.errors).toEqual([]);
    expect(rowsOf(idR)).toBe(counter);
    expect(R.invalid).toEqual([]);
  };

  it('one flipped bit in the ciphertext → BAD_SIGNATURE, nothing stored', async () => {
    const env = sealFor(idR, main, counter + 1, mapUpdate('evil', 1));
    for (const bit of [0, 77, fromB64(env.ct).length * 8 - 1]) await expectReject({ ...env, ct: flipBit(env.ct, bit) }, ErrorCode.BAD_SIGNATURE);
    await expectReject({ ...env, nonce: flipBit(env.nonce, 3) }, ErrorCode.BAD_SIGNATURE);
    await expectReject({ ...env, lane: 1 }, ErrorCode.BAD_SIGNATURE);
    expect(rowsOf(idR)).toBe(1);
    await expectHonestConvergence();
  });

  it('a signature made by another key (a stranger, or another device of the user) → BAD_SIGNATURE', async () => {
    const env = sealFor(idR, main, counter + 1, mapUpdate('evil', 1));
    // The helper signs exactly what the engine signs: re-signing with the author key is a no-op.
    expect(resignEnvelope(env, idR.device.secretKey)).toEqual(env);
    await expectReject(resignEnvelope(env, strangerKeys().secretKey), ErrorCode.BAD_SIGNATURE);
    await expectReject(resignEnvelope(env, idH.device.secretKey), ErrorCode.BAD_SIGNATURE);
    await expectReject({ ...env, sig: 'A'.repeat(86) }, ErrorCode.BAD_SIGNATURE);
    expect(rowsOf(idR)).toBe(1);
    await expectHonestConvergence();
  });

  it('an envelope moved into another of the user’s documents → BAD_SIGNATURE (the signature binds doc)', async () => {
    const other = docRef(idR, 'crisis_contacts', 'main');
    const stored = (await pushLegit('r2')).env;
    // Where its counter does not fit, the counter refuses it before any signature work.
    await expectReject({ ...stored, doc: other.id }, ErrorCode.COUNTER_GAP);
    // Where its counter would be the next one, the signature (which binds doc) refuses it.
    const first = sealFor(idR, main, 1, mapUpdate('evil', 0));
    await expectReject({ ...first, doc: other.id }, ErrorCode.BAD_SIGNATURE);
    const fresh = sealFor(idR, main, 1, mapUpdate('evil', 1));
    await expectReject({ ...fresh, doc: other.id }, ErrorCode.BAD_SIGNATURE);
    expect(rowsOf(idR, other.id)).toBe(0);
    expect(docOwners(relay.dbPath).has(other.id)).toBe(false);
    expect(rowsOf(idR)).toBe(2);
    await expectHonestConvergence();
  });

  it('an envelope of another device, pushed by R → WRONG_AUTHOR', async () => {
    // Genuinely sealed and signed by H: R may not relay it.
    const byH = sealFor(idH, main, 1_000, mapUpdate('evil', 1));
    await expectReject(byH, ErrorCode.WRONG_AUTHOR);
    // R's own envelope relabelled as H's.
    const relabelled = { ...sealFor(idR, main, counter + 1, mapUpdate('evil', 2)), device: idH.device.deviceId };
    await expectReject(relabelled, ErrorCode.WRONG_AUTHOR);
    expect(rowsOf(idH)).toBe(0);
    expect(rowsOf(idR)).toBe(1);
    await expectHonestConvergence();
  });

  it('a repeated counter with different content → COUNTER_REUSED, the stored update stays', async () => {
    await expectReject(sealFor(idR, main, 1, mapUpdate('evil', 1)), ErrorCode.COUNTER_REUSED);
    await pushLegit('r2');
    await expectReject(sealFor(idR, main, 2, mapUpdate('evil', 2)), ErrorCode.COUNTER_REUSED);
    await expectReject(sealFor(idR, main, 1, mapUpdate('evil', 3)), ErrorCode.COUNTER_REUSED);
    expect(rowsOf(idR)).toBe(2);
    await expectHonestConvergence();
  });

  it('the identical envelope pushed again is acknowledged with the same seq and stored once', async () => {
    const first = await pushLegit('r2');
    R.sendFrame({ type: 'push', envs: [first.env] });
    expect(await R.nextOf('ack')).toEqual({ type: 'ack', acks: [{ doc: main.id, counter: first.env.counter, seq: first.seq }] });
    // Twice in one frame, too.
    const update3 = mapUpdate('r3', 3);
    const env3 = sealFor(idR, main, ++counter, update3);
    Y.applyUpdate(docR, update3);
    R.sendFrame({ type: 'push', envs: [env3, env3] });
    const ack = await R.nextOf('ack');
    expect(ack.acks).toHaveLength(2);
    expect(ack.acks[0]).toEqual(ack.acks[1]);
    expect(ack.acks[0]!.seq).toBe(first.seq + 1);
    expect(R.received.filter((f) => f.type === 'reject')).toEqual([]);
    expect(rowsOf(idR)).toBe(3);
    await expectHonestConvergence();
  });

  it('a skipped counter → COUNTER_GAP; once the gap is filled the same envelope is accepted', async () => {
    const update3 = mapUpdate('r3', 3);
    const third = sealFor(idR, main, 3, update3);
    await expectReject(third, ErrorCode.COUNTER_GAP);
    await expectReject(sealFor(idR, main, 1_000_000, mapUpdate('evil', 1)), ErrorCode.COUNTER_GAP);
    expect(rowsOf(idR)).toBe(1);
    await pushLegit('r2');
    R.sendFrame({ type: 'push', envs: [third] });
    expect((await R.nextOf('ack')).acks[0]?.counter).toBe(3);
    counter = 3;
    Y.applyUpdate(docR, update3);
    await expectHonestConvergence();
  });

  it('a batch mixing good and bad envelopes: each gets its own answer, only the good ones are stored', async () => {
    const update2 = mapUpdate('r2', 2);
    const update3 = mapUpdate('r3', 3);
    const good2 = sealFor(idR, main, 2, update2);
    const good3 = sealFor(idR, main, 3, update3);
    const evil3 = sealFor(idR, main, 3, mapUpdate('evil', 1));
    const gap5 = sealFor(idR, main, 5, mapUpdate('evil', 2));
    R.sendFrame({ type: 'push', envs: [good2, { ...evil3, ct: flipBit(evil3.ct, 9) }, good3, gap5] });
    const ack = await R.nextOf('ack');
    expect(ack.acks.map((x) => x.counter)).toEqual([2, 3]);
    expect(ack.acks.map((x) => x.seq)).toEqual([2, 3]);
    const rejects = R.received.filter((f) => f.type === 'reject').map((f) => [f.counter, f.code]);
    expect(rejects).toEqual([
      [3, ErrorCode.BAD_SIGNATURE],
      [5, ErrorCode.COUNTER_GAP],
    ]);
    counter = 3;
    Y.applyUpdate(docR, update2);
    Y.applyUpdate(docR, update3);
    expect(rowsOf(idR)).toBe(3);
    await expectHonestConvergence();
  });

  it('another user’s device can neither read nor write the user’s document: its id names only its own, empty one', async () => {
    const idV = await createIdentity();
    const V = await rawDevice(relay.url, idV);
    // The user's document id, in V's namespace: an empty document, the same answer as any unknown id.
    V.sendFrame({ type: 'sub', docs: [{ doc: main.id, after: 0 }] });
    expect(await V.nextOf('synced')).toEqual({ type: 'synced', doc: main.id, seq: 0 });
    // V's own, validly signed envelope under that id lands in V's namespace, not the user's.
    const intoMain: DocRef = { ...docRef(idV, 'safety_plan', 'main'), id: main.id };
    V.sendFrame({ type: 'push', envs: [sealFor(idV, intoMain, 1, mapUpdate('evil', 1))] });
    expect((await V.nextOf('ack')).acks[0]).toMatchObject({ doc: main.id, seq: 1 });
    // Replaying one of R's stored envelopes as V.
    await expectReject(sealFor(idR, main, 1, mapUpdate('r1', 1)), ErrorCode.WRONG_AUTHOR, V);

    // Subscribing before the user's document exists must not leak it once it does.
    const later = docRef(idR, 'crisis_contacts', 'later');
    V.sendFrame({ type: 'sub', docs: [{ doc: later.id, after: 0 }] });
    expect(await V.nextOf('synced')).toMatchObject({ doc: later.id, seq: 0 });
    R.sendFrame({ type: 'push', envs: [sealFor(idR, later, 1, mapUpdate('secret', 1))] });
    expect((await R.nextOf('ack')).acks[0]).toMatchObject({ doc: later.id, seq: 1 });
    // A round trip on V after R's ack: any fan-out to V would have been queued before this answer.
    const fresh = docRef(idV, 'profile', 'x');
    V.sendFrame({ type: 'sub', docs: [{ doc: fresh.id, after: 0 }] });
    await V.next((f) => f.type === 'synced' && f.doc === fresh.id);
    V.sendFrame({ type: 'sub', docs: [{ doc: later.id, after: 0 }] });
    expect(await V.next((f) => f.type === 'synced' && f.doc === later.id)).toMatchObject({ seq: 0 });
    expect(V.received.filter((f) => f.type === 'updates')).toEqual([]);
    expect(V.received.filter((f) => f.type === 'error')).toEqual([]);

    // The user's document holds only its own devices' entries; V's is its own.
    expect(logRowsByDevice(relay.dbPath, main.id, idR.user.userId).has(idV.device.deviceId)).toBe(false);
    expect(logRowsByDevice(relay.dbPath, main.id, idV.user.userId)).toEqual(new Map([[idV.device.deviceId, 1]]));
    expect(docOwners(relay.dbPath).get(main.id)).toEqual([idR.user.userId, idV.user.userId].sort());
    await expectHonestConvergence();
  });
});

// ── a hostile relay: attacks only the receiving device can detect ──────────────────────────

interface HostileRelay {
  readonly url: string;
  /** Waits until the device has subscribed to `doc`. */
  subscribed(doc: DocId): Promise<void>;
  /** Sends crafted `updates` for `doc`, then `synced` at the highest seq served. */
  serve(doc: DocId, items: readonly { seq: number; env: Envelope }[]): void;
  close(): Promise<void>;
}

const HOSTILE_RELAY_ID = RelayIdSchema.parse('hostile-relay');

/**
 * A relay that authenticates devices correctly (so the client trusts the connection) and
 * hands out the given certificates, then serves whatever the test crafts.
 */
const startHostileRelay = async (certs: readonly DeviceCertificate[]): Promise<HostileRelay> => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await once(wss, 'listening');
  const { port } = wss.address() as AddressInfo;
  const subs = new Set<DocId>();
  let ready: WebSocket | undefined;
  wss.on('connection', (ws) => {
    let hello: HelloFrame | undefined;
    const nonce = createChallengeNonce();
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const parsed = parseClientFrame((data as Buffer).toString('utf8'), 1 << 20);
      if (!parsed.ok) return;
      const frame = parsed.value;
      if (frame.type === 'hello') {
        hello = frame;
        ws.send(encodeFrame({ type: 'challenge', v: PROTOCOL_VERSION, relay: HOSTILE_RELAY_ID, nonce }));
      } else if (frame.type === 'auth') {
        const key = hello?.cert && fromB64(hello.cert.deviceKey);
        if (!hello || !key || !verifyChallenge(HOSTILE_RELAY_ID, nonce, hello.user, hello.device, frame.sig, key)) {
          ws.close(4001, 'AUTH_FAILED');
          return;
        }
        ready = ws;
        const tier = { name: 'premium' as const, policy: DEFAULT_TIERS.premium, since: 0 };
        ws.send(encodeFrame({ type: 'ready', user: hello.user, device: hello.device, certs: [...certs], tier }));
      } else if (frame.type === 'sub') {
        for (const { doc } of frame.docs) subs.add(doc);
      }
    });
  });
  return {
    url: `ws://127.0.0.1:${port}`,
    subscribed: (doc) => waitFor(() => subs.has(doc), 3_000, `subscription to ${doc}`),
    serve(doc, items) {
      if (!ready) throw new Error('no authenticated device');
      ready.send(encodeFrame({ type: 'updates', doc, items: items.map(({ seq, env }) => ({ seq: asSeq(seq), env })) }));
      ready.send(encodeFrame({ type: 'synced', doc, seq: asSeq(Math.max(...items.map((i) => i.seq))) }));
    },
    close: async () => {
      for (const client of wss.clients) client.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
};

describe('attacks only the receiving device detects (hostile relay)', () => {
  /** The victim's device (a real KeelClient), and B, another device of the same user, as author. */
  let idA: Identity;
  let idB: Identity;
  /** A device the hostile relay vouches for with a certificate the user never signed. */
  let idF: Identity;
  let hostile: HostileRelay;
  let victim: Device;
  let docY: Y.Doc;
  let docX: Y.Doc;
  let refY: DocRef;
  let refX: DocRef;

  beforeEach(async () => {
    idA = await createIdentity();
    idB = await linkNewDevice(idA);
    const keysF = strangerKeys();
    const forged = certifyFirstDevice({ ...idA.user, userSecretKey: strangerKeys().secretKey }, keysF, Date.now());
    idF = { user: idA.user, device: keysF, cert: forged, chain: [] };
    hostile = await startHostileRelay([idA.cert, idB.cert, forged]);
    cleanups.push(() => hostile.close());
    refY = docRef(idA, 'safety_plan', 'main');
    refX = docRef(idA, 'crisis_contacts', 'main');
    victim = await device(hostile.url, idA);
    docY = await victim.client.open({ class: 'safety_plan', name: 'main' });
    docX = await victim.client.open({ class: 'crisis_contacts', name: 'main' });
    expect(victim.client.docId({ class: 'safety_plan', name: 'main' })).toBe(refY.id);
    await hostile.subscribed(refY.id);
    await hostile.subscribed(refX.id);
    // Content before the attack: B's update #1, served honestly.
    hostile.serve(refY.id, [{ seq: 1, env: sealFor(idB, refY, 1, mapUpdate('b1', 1)) }]);
    await waitFor(() => docY.getMap('m').get('b1') === 1, 3_000, 'B’s first update');
  });

  /**
   * Serves `bad` at seq 2 and expects exactly one error with `code` for document Y and no change
   * to either document; then serves B's valid update #2, which must be applied.
   */
  const expectRefusedThenRecover = async (bad: Envelope, code: ErrorCode) => {
    const beforeY = Y.encodeStateVector(docY);
    const beforeX = Y.encodeStateVector(docX);
    hostile.serve(refY.id, [{ seq: 2, env: bad }]);
    await waitFor(() => victim.errors.length > 0, 3_000, `${code} at the device`);
    expect(victim.errors).toEqual([expect.objectContaining({ code, doc: refY.id })]);
    expect(Y.encodeStateVector(docY)).toEqual(beforeY);
    expect(Y.encodeStateVector(docX)).toEqual(beforeX);
    expect(mapOf(docY)).toEqual({ b1: 1 });
    expect(mapOf(docX)).toEqual({});

    hostile.serve(refY.id, [{ seq: 3, env: sealFor(idB, refY, 2, mapUpdate('b2', 2)) }]);
    await waitFor(() => docY.getMap('m').get('b2') === 2, 3_000, 'B’s valid update #2 after the attack');
    expect(mapOf(docY)).toEqual({ b1: 1, b2: 2 });
    expect(victim.errors).toHaveLength(1);
  };

  it('tampered ciphertext re-signed by a different key → BAD_SIGNATURE', async () => {
    const env = sealFor(idB, refY, 2, mapUpdate('evil', 1));
    await expectRefusedThenRecover(resignEnvelope({ ...env, ct: flipBit(env.ct, 40) }, strangerKeys().secretKey), ErrorCode.BAD_SIGNATURE);
  });

  it('an envelope sealed for document X served in document Y’s updates → refused (NOT_AUTHORIZED), applied to neither', async () => {
    await expectRefusedThenRecover(sealFor(idB, refX, 1, mapUpdate('evil', 1)), ErrorCode.NOT_AUTHORIZED);
  });

  it('ciphertext sealed for X, doc field rewritten to Y and re-signed by its author → DECRYPT_FAILED (the AEAD binds doc)', async () => {
    const forX = sealFor(idB, refX, 2, mapUpdate('evil', 1));
    const moved = resignEnvelope({ ...forX, doc: refY.id }, idB.device.secretKey);
    await expectRefusedThenRecover(moved, ErrorCode.DECRYPT_FAILED);
  });

  it('a counter gap the relay left → COUNTER_GAP; the same envelope applies once the gap is filled', async () => {
    const third = sealFor(idB, refY, 3, mapUpdate('b3', 3));
    await expectRefusedThenRecover(third, ErrorCode.COUNTER_GAP);
    hostile.serve(refY.id, [{ seq: 4, env: third }]);
    await waitFor(() => docY.getMap('m').get('b3') === 3, 3_000, 'B’s update #3 after #2');
    expect(victim.errors).toHaveLength(1);
  });

  it('an envelope from a device with a forged certificate → UNKNOWN_DEVICE', async () => {
    await expectRefusedThenRecover(sealFor(idF, refY, 1, mapUpdate('evil', 1)), ErrorCode.UNKNOWN_DEVICE);
  });

  it('an envelope from a device with no certificate at all → UNKNOWN_DEVICE', async () => {
    const keysG = strangerKeys();
    await expectRefusedThenRecover(sealFor({ ...idF, device: keysG }, refY, 1, mapUpdate('evil', 1)), ErrorCode.UNKNOWN_DEVICE);
  });

  it('a correctly sealed envelope whose plaintext is not a Yjs update → BAD_PAYLOAD', async () => {
    await expectRefusedThenRecover(sealFor(idB, refY, 2, new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x01, 0x02])), ErrorCode.BAD_PAYLOAD);
  });
});
