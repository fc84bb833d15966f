// Worker thread of load.ts: prepares a bulk load, connects its devices, then sends open-loop.
import { parentPort, workerData } from 'node:worker_threads';
import { createIdentity, type Identity } from '@keel/client';
import { PROTOCOL_VERSION, cryptoReady, signChallenge } from '@keel/engine';
import * as encoding from 'lib0/encoding';
import { WebSocket } from 'ws';
import { messageYjsUpdate, writeUpdate } from 'y-protocols/sync';
import { docRef, sealFor } from '../support/raw-device.js';
import { createBulkUpdates, meanLength } from './bulk-updates.js';
import type { FromWorker, LoadOptions, LoadStats, ToWorker } from './load.js';

const port = parentPort!;
const options = workerData as LoadOptions;
const post = (message: FromWorker) => port.postMessage(message);

/** y-protocols' message type of sync messages (y-websocket's `messageSync`). */
const MESSAGE_SYNC = 0;
/** Envelopes in one push frame, well under the protocol's 512. */
const MAX_ENVELOPES_PER_FRAME = 64;
const HANDSHAKE_TIMEOUT_MS = 15_000;

interface BulkDevice {
  /** Sends items [from, to) of this device's prepared load. */
  send(from: number, to: number): void;
  readonly socket: () => WebSocket | undefined;
}

const tally = {
  confirmed: 0,
  refusals: {} as Record<string, number>,
  closes: {} as Record<string, number>,
  maxBufferedBytes: 0,
};
const bump = (counts: Record<string, number>, key: string) => (counts[key] = (counts[key] ?? 0) + 1);
let closingOnPurpose = false;

const onOpen = (ws: WebSocket): Promise<void> =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('socket did not open within 15 s')), HANDSHAKE_TIMEOUT_MS);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve();
    });
    ws.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });

const watchClose = (ws: WebSocket) => {
  ws.on('error', () => {});
  ws.on('close', (code) => {
    if (!closingOnPurpose) bump(tally.closes, String(code));
  });
};

// ── Keel: basic-tier users, one check-in document each, envelopes sealed in advance ─────────

interface KeelPrepared {
  readonly identity: Identity;
  /** Each envelope's JSON, counters 1..n in order. */
  readonly envelopes: readonly string[];
}

/** Minimal relay frames this driver reads; the relay's output is trusted here (parsing with zod would cost the driver core more than the relay spends). */
type RelayReply =
  | { type: 'challenge'; relay: string; nonce: string }
  | { type: 'ready' }
  | { type: 'ack'; acks: readonly unknown[] }
  | { type: 'reject'; code: string }
  | { type: 'error'; code: string }
  | { type: string };

/**
 * The loopback address device `index` connects from. The bulk devices stand for many phones, and
 * the relay limits new connections per address (burst 128, then 32/s): from one address most
 * of them would be refused with 429. 127.0.0.0/8 is all loopback on Linux.
 */
const deviceAddress = (index: number): string => `127.1.${Math.floor(index / 250)}.${(index % 250) + 1}`;

const connectKeelDevice = async (url: string, prepared: KeelPrepared, index: number): Promise<BulkDevice> => {
  const { identity, envelopes } = prepared;
  const ws = new WebSocket(url, { perMessageDeflate: false, localAddress: deviceAddress(index) });
  watchClose(ws);
  await onOpen(ws);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no "ready" within 15 s')), HANDSHAKE_TIMEOUT_MS);
    ws.on('message', (data) => {
      const frame = JSON.parse((data as Buffer).toString('utf8')) as RelayReply;
      if (frame.type === 'ack' && 'acks' in frame) tally.confirmed += frame.acks.length;
      else if ((frame.type === 'reject' || frame.type === 'error') && 'code' in frame) {
        bump(tally.refusals, `${frame.type}:${frame.code}`);
        if (frame.type === 'error') reject(new Error(`relay error ${frame.code} during the handshake`));
      } else if (frame.type === 'challenge' && 'nonce' in frame) {
        const sig = signChallenge(frame.relay, frame.nonce, identity.user.userId, identity.device.deviceId, identity.device.secretKey);
        ws.send(JSON.stringify({ type: 'auth', sig }));
      } else if (frame.type === 'ready') {
        clearTimeout(timer);
        resolve();
      }
    });
    ws.once('close', (code) => reject(new Error(`socket closed (${code}) during the handshake`)));
    ws.send(JSON.stringify({ type: 'hello', v: PROTOCOL_VERSION, user: identity.user.userId, device: identity.device.deviceId, cert: identity.cert }));
  });
  return {
    socket: () => ws,
    send(from, to) {
      for (let i = from; i < to; i += MAX_ENVELOPES_PER_FRAME) {
        ws.send(`{"type":"push","envs":[${envelopes.slice(i, Math.min(to, i + MAX_ENVELOPES_PER_FRAME)).join(',')}]}`);
      }
    },
  };
};

// ── reference: one document (room) per device, y-protocols update messages encoded in advance ──

const connectReferenceDevice = async (url: string, room: string, messages: readonly Uint8Array[]): Promise<BulkDevice> => {
  const ws = new WebSocket(`${url}/${room}`, { perMessageDeflate: false });
  watchClose(ws);
  // The server opens with its sync step 1, in the same packet as the upgrade: listen before 'open'.
  const firstMessage = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no sync step 1 within 15 s')), HANDSHAKE_TIMEOUT_MS);
    ws.once('message', () => {
      clearTimeout(timer);
      resolve();
    });
    ws.once('close', (code) => {
      clearTimeout(timer);
      reject(new Error(`socket closed (${code}) before sync step 1`));
    });
  });
  firstMessage.catch(() => {});
  ws.on('message', (data) => {
    const bytes = data as Buffer;
    // The server broadcasts every applied update to every socket of the room, the author's
    // too: that echo is the only sign that it processed one.
    if (bytes[0] === MESSAGE_SYNC && bytes[1] === messageYjsUpdate) tally.confirmed++;
  });
  await onOpen(ws);
  await firstMessage;
  return {
    socket: () => ws,
    send(from, to) {
      for (let i = from; i < to; i++) ws.send(messages[i]!);
    },
  };
};

// ── the run ────────────────────────────────────────────────────────────────────────────────

const updatesPerDevice = Math.ceil((options.rate * options.seconds) / options.devices) + 1;
let connectDevices: (url: string) => Promise<BulkDevice[]>;
let devices: BulkDevice[] = [];
let startedAt = 0;
let lastSendAt = 0;
let offered = 0;

const statsNow = (): LoadStats => ({
  offered,
  sendSeconds: (lastSendAt - startedAt) / 1000,
  confirmed: tally.confirmed,
  refusals: { ...tally.refusals },
  closes: { ...tally.closes },
  maxBufferedBytes: tally.maxBufferedBytes,
  elapsedSeconds: startedAt === 0 ? 0 : (performance.now() - startedAt) / 1000,
});

const prepare = async () => {
  const t0 = performance.now();
  // One history of updates serves every device: each device's copy is sealed on its own (Keel)
  // or applied to a room of its own (reference), so sharing the plaintext changes nothing.
  const updates = createBulkUpdates(updatesPerDevice, options.updateBytes);
  let meanWireBytes: number;
  if (options.kind === 'keel') {
    await cryptoReady();
    const prepared: KeelPrepared[] = [];
    for (let d = 0; d < options.devices; d++) {
      const identity = await createIdentity();
      const doc = docRef(identity, 'checkin', 'bulk');
      prepared.push({ identity, envelopes: updates.map((update, i) => JSON.stringify(sealFor(identity, doc, i + 1, update))) });
    }
    meanWireBytes = meanLength(prepared[0]?.envelopes ?? []);
    connectDevices = (url) => Promise.all(prepared.map((p, i) => connectKeelDevice(url, p, i)));
  } else {
    const messages = updates.map((update) => {
      const encoder = encoding.createEncoder();
      encoding.writeVarUint(encoder, MESSAGE_SYNC);
      writeUpdate(encoder, update);
      return encoding.toUint8Array(encoder);
    });
    meanWireBytes = meanLength(messages);
    connectDevices = (url) => Promise.all(Array.from({ length: options.devices }, (_, d) => connectReferenceDevice(url, `bulk-${d}`, messages)));
  }
  post({
    type: 'prepared',
    prepareSeconds: (performance.now() - t0) / 1000,
    updatesPerDevice,
    meanUpdateBytes: meanLength(updates),
    meanWireBytes,
  });
};

/**
 * Open loop: each device sends every `tickMs` whatever its share of the rate says is due by the
 * wall clock, never waiting for the relay. Devices are staggered across the tick so the relay
 * sees a steady stream rather than 80 frames at once.
 */
const run = () => {
  const n = devices.length;
  const perDevicePerMs = options.rate / n / 1000;
  const windowMs = options.seconds * 1000;
  const sent = Array.from({ length: n }, () => 0);
  const phase = Array.from({ length: n }, (_, d) => (d * options.tickMs) / n);
  const nextAt = [...phase];
  startedAt = performance.now();
  lastSendAt = startedAt;
  const timer = setInterval(() => {
    const now = performance.now();
    const elapsed = Math.min(windowMs, now - startedAt);
    const over = now - startedAt >= windowMs;
    let buffered = 0;
    for (let d = 0; d < n; d++) {
      if (!over && elapsed < nextAt[d]!) continue;
      nextAt[d] = Math.max(nextAt[d]! + options.tickMs, elapsed);
      const due = Math.min(updatesPerDevice, Math.floor(Math.max(0, elapsed - phase[d]!) * perDevicePerMs));
      if (due > sent[d]!) {
        devices[d]!.send(sent[d]!, due);
        offered += due - sent[d]!;
        sent[d] = due;
        lastSendAt = now;
      }
      buffered += devices[d]!.socket()?.bufferedAmount ?? 0;
    }
    tally.maxBufferedBytes = Math.max(tally.maxBufferedBytes, buffered);
    if (over) {
      clearInterval(timer);
      post({ type: 'sent', stats: statsNow() });
    }
  }, 1);
};

const closeAll = async () => {
  closingOnPurpose = true;
  await Promise.all(
    devices.map(async (device) => {
      const ws = device.socket();
      if (!ws || ws.readyState === WebSocket.CLOSED) return;
      const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
      ws.close(1000, 'bench done');
      const timer = setTimeout(() => ws.terminate(), 1_000);
      await closed;
      clearTimeout(timer);
    }),
  );
  devices = [];
};

const handle = async (message: ToWorker) => {
  switch (message.type) {
    case 'connect': {
      const t0 = performance.now();
      devices = await connectDevices(message.url);
      return post({ type: 'connected', seconds: (performance.now() - t0) / 1000 });
    }
    case 'start':
      return run();
    case 'report':
      return post({ type: 'report', stats: statsNow() });
    case 'close':
      await closeAll();
      return post({ type: 'closed' });
  }
};

const failed = (error: unknown) => post({ type: 'failed', message: error instanceof Error ? error.message : String(error) });
port.on('message', (message: ToWorker) => {
  handle(message).catch(failed);
});
prepare().catch(failed);
