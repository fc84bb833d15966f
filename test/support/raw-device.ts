import type { Identity } from '@keel/client';
import {
  type DeviceId,
  type DocClass,
  type DocId,
  type Envelope,
  type Lane,
  PROTOCOL_VERSION,
  type RelayFrame,
  basePriority,
  deriveDocId,
  deriveDocKey,
  deriveEpochZeroSecret,
  deviceIdFromKey,
  encodeFields,
  fromB64,
  getSodium,
  parseRelayFrame,
  sealEnvelope,
  signChallenge,
  toB64,
} from '@keel/engine';
import Database from 'better-sqlite3';
import { WebSocket } from 'ws';
import * as Y from 'yjs';

/**
 * A raw protocol peer for tests: speaks Keel's wire frames over `ws` with none of the client
 * SDK's manners, so a test can send the relay anything and watch exactly what comes back.
 */

export interface CloseEvent {
  readonly code: number;
  readonly reason: string;
}

export type FrameOf<K extends RelayFrame['type']> = Extract<RelayFrame, { type: K }>;

export interface RawSocket {
  readonly ws: WebSocket;
  /** Every valid relay frame received so far, in arrival order (never consumed). */
  readonly received: readonly RelayFrame[];
  /** Text or binary the relay sent that is not a valid relay frame; a correct relay leaves it empty. */
  readonly invalid: readonly string[];
  /** Resolves when the socket closes, with the code and reason the relay gave. */
  readonly closed: Promise<CloseEvent>;
  readonly isOpen: boolean;
  /** Sends a string (text frame) or bytes (binary frame) exactly as given. */
  send(data: string | Uint8Array): void;
  /** Sends `JSON.stringify(frame)`; the frame need not be valid. */
  sendFrame(frame: unknown): void;
  /**
   * Takes the first not yet taken frame that matches, waiting up to `timeoutMs`. Rejects on
   * timeout, or when the socket closes with no match queued.
   */
  next<T extends RelayFrame>(predicate: (frame: RelayFrame) => frame is T, timeoutMs?: number): Promise<T>;
  next(predicate: (frame: RelayFrame) => boolean, timeoutMs?: number): Promise<RelayFrame>;
  /** Takes the next frame of one type. */
  nextOf<K extends RelayFrame['type']>(type: K, timeoutMs?: number): Promise<FrameOf<K>>;
  /** Waits for the close, bounded. */
  expectClose(timeoutMs?: number): Promise<CloseEvent>;
  /** Closes (1000) and waits, terminating the socket if the peer does not answer in time. */
  close(): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 2_000;
/** Generous: the relay's own limit is lower, and a test may want to see what it really sends. */
const MAX_INBOUND_CHARS = 64 * 1024 * 1024;

const withTimeout = <T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> => {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
};

/** Opens a WebSocket to `url` and resolves once it is open. */
export const openRawSocket = async (url: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<RawSocket> => {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  const received: RelayFrame[] = [];
  const invalid: string[] = [];
  const inbox: RelayFrame[] = [];
  let waiters: { predicate: (frame: RelayFrame) => boolean; resolve: (frame: RelayFrame) => void; reject: (error: Error) => void }[] = [];
  let closeEvent: CloseEvent | undefined;

  const closed = new Promise<CloseEvent>((resolve) => {
    ws.on('close', (code, reason) => {
      closeEvent = { code, reason: reason.toString('utf8') };
      for (const waiter of waiters.splice(0)) {
        waiter.reject(new Error(`socket closed (${closeEvent.code} ${closeEvent.reason}) before the awaited frame arrived`));
      }
      resolve(closeEvent);
    });
  });
  // Errors (refused connection, 1009 from the peer) are followed by 'close'; that is what tests watch.
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      invalid.push(`<binary ${(data as Buffer).length} bytes>`);
      return;
    }
    const text = (data as Buffer).toString('utf8');
    const parsed = parseRelayFrame(text, MAX_INBOUND_CHARS);
    if (!parsed.ok) {
      invalid.push(text.slice(0, 512));
      return;
    }
    const frame = parsed.value;
    received.push(frame);
    const index = waiters.findIndex((w) => w.predicate(frame));
    if (index >= 0) {
      const [waiter] = waiters.splice(index, 1);
      waiter!.resolve(frame);
    } else {
      inbox.push(frame);
    }
  });

  await withTimeout(
    new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('close', (code) => reject(new Error(`socket to ${url} closed (${code}) before opening`)));
    }),
    timeoutMs,
    `a socket to ${url}`,
  ).catch((error: unknown) => {
    ws.terminate();
    throw error;
  });

  const next = (predicate: (frame: RelayFrame) => boolean, wait = DEFAULT_TIMEOUT_MS): Promise<RelayFrame> => {
    const index = inbox.findIndex(predicate);
    if (index >= 0) return Promise.resolve(inbox.splice(index, 1)[0]!);
    if (closeEvent) return Promise.reject(new Error(`socket already closed (${closeEvent.code} ${closeEvent.reason})`));
    let entry: (typeof waiters)[number] | undefined;
    const found = new Promise<RelayFrame>((resolve, reject) => {
      entry = { predicate, resolve, reject };
      waiters.push(entry);
    });
    return withTimeout(found, wait, 'a matching frame').catch((error: unknown) => {
      waiters = waiters.filter((w) => w !== entry);
      const seen = received.map((f) => (f.type === 'error' || f.type === 'reject' ? `${f.type}:${f.code}` : f.type)).join(', ');
      throw new Error(`${error instanceof Error ? error.message : String(error)}; received so far: [${seen}]`);
    });
  };

  return {
    ws,
    received,
    invalid,
    closed,
    get isOpen() {
      return ws.readyState === WebSocket.OPEN;
    },
    send(data) {
      ws.send(data, { binary: typeof data !== 'string' });
    },
    sendFrame(frame) {
      ws.send(JSON.stringify(frame));
    },
    next: next as RawSocket['next'],
    nextOf: <K extends RelayFrame['type']>(type: K, wait?: number) =>
      next((f) => f.type === type, wait) as Promise<FrameOf<K>>,
    expectClose: (wait = DEFAULT_TIMEOUT_MS) => withTimeout(closed, wait, 'the socket to close'),
    async close() {
      if (ws.readyState === WebSocket.CLOSED) return;
      if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'test done');
      await withTimeout(closed, 1_000, 'close handshake').catch(() => {
        ws.terminate();
        return closed;
      });
    },
  };
};

export interface HandshakeOptions {
  /** Present the device certificate (and chain) in hello; default true. */
  readonly withCert?: boolean;
  /** Answer the challenge with this key instead of the device's own (an impostor). */
  readonly signingKey?: Uint8Array;
  readonly timeoutMs?: number;
}

/** hello → challenge → auth → ready, as `identity`'s device. Resolves to the relay's `ready`. */
export const authenticate = async (raw: RawSocket, identity: Identity, options: HandshakeOptions = {}): Promise<FrameOf<'ready'>> => {
  const { user, device, cert, chain } = identity;
  const hello: Record<string, unknown> = { type: 'hello', v: PROTOCOL_VERSION, user: user.userId, device: device.deviceId };
  if (options.withCert ?? true) {
    hello.cert = cert;
    if (chain.length > 0) hello.chain = chain;
  }
  raw.sendFrame(hello);
  const challenge = await raw.nextOf('challenge', options.timeoutMs);
  const sig = signChallenge(challenge.relay, challenge.nonce, user.userId, device.deviceId, options.signingKey ?? device.secretKey);
  raw.sendFrame({ type: 'auth', sig });
  return raw.nextOf('ready', options.timeoutMs);
};

/** Opens a socket and authenticates it as `identity`'s device. */
export const connectRawDevice = async (url: string, identity: Identity): Promise<RawSocket> => {
  const raw = await openRawSocket(url);
  try {
    await authenticate(raw, identity);
  } catch (error) {
    await raw.close();
    throw error;
  }
  return raw;
};

// ── envelopes, sealed exactly as the client seals them ─────────────────────────────────────

/** A user's document as the relay and the user's devices know it. */
export interface DocRef {
  readonly id: DocId;
  /** Epoch-0 document key, derived from the user's root key as the client does. */
  readonly key: Uint8Array;
  readonly lane: Lane;
}

export const docRef = (identity: Identity, docClass: DocClass, name: string): DocRef => {
  const id = deriveDocId(identity.user.docIdKey, docClass, name);
  return { id, key: deriveDocKey(deriveEpochZeroSecret(identity.user.rootKey), id, 0), lane: basePriority(docClass) };
};

/** Seals `payload` as update #`counter` of `doc` by `identity`'s device, signed by that device. */
export const sealFor = (identity: Identity, doc: DocRef, counter: number, payload: Uint8Array): Envelope =>
  sealEnvelope(
    { doc: doc.id, kind: 'update', epoch: 0, device: identity.device.deviceId, counter, lane: doc.lane },
    payload,
    { key: doc.key, signingKey: identity.device.secretKey },
  );

/**
 * Mirrors the engine's signed bytes (crypto/envelope.ts `signedBytes`), so a test can re-sign
 * a modified envelope. Tests check it against `sealEnvelope` (Ed25519 is deterministic).
 */
const ENVELOPE_SIGNATURE_DOMAIN = 'keel/envelope-sig/v1';

/** Signs `env` as it is (header, nonce, ciphertext) with `secretKey`; the old signature is dropped. */
export const resignEnvelope = (env: Envelope, secretKey: Uint8Array): Envelope => {
  const bytes = encodeFields([ENVELOPE_SIGNATURE_DOMAIN, env.doc, env.kind, env.epoch, env.device, env.counter, env.lane, fromB64(env.nonce), fromB64(env.ct)]);
  return { ...env, sig: toB64(getSodium().crypto_sign_detached(bytes, secretKey)) };
};

/** Flips one bit of base64url-encoded bytes. */
export const flipBit = (b64: string, bit = 0): string => {
  const bytes = fromB64(b64).slice();
  const index = Math.floor(bit / 8) % bytes.length;
  bytes[index] = bytes[index]! ^ (1 << (bit % 8));
  return toB64(bytes);
};

/** A fresh Ed25519 key pair nobody certified. */
export const strangerKeys = (): { publicKey: Uint8Array; secretKey: Uint8Array; deviceId: DeviceId } => {
  const pair = getSodium().crypto_sign_keypair();
  return { publicKey: pair.publicKey, secretKey: pair.privateKey, deviceId: deviceIdFromKey(pair.publicKey) };
};

/**
 * A self-contained Yjs update that sets `m[key] = value` in a doc of its own (its own client
 * id), so it applies alone, in any order, and its effect is visible in `getMap('m')`.
 */
export const mapUpdate = (key: string, value: unknown): Uint8Array => {
  const doc = new Y.Doc();
  doc.getMap('m').set(key, value);
  const update = Y.encodeStateAsUpdate(doc);
  doc.destroy();
  return update;
};

// ── what the relay stored ──────────────────────────────────────────────────────────────────

/**
 * Rows of the relay's `log` table by author device, read through a read-only connection; of
 * one document id (in any user's namespace, or only in `userId`'s) or of all.
 */
export const logRowsByDevice = (dbPath: string, docId?: DocId, userId?: string): Map<string, number> => {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const where = [docId ? 'doc_id = @docId' : '', userId ? 'user_id = @userId' : ''].filter(Boolean).join(' AND ');
    const rows = db
      .prepare<{ docId?: string; userId?: string }, { device_id: string; n: number }>(
        `SELECT device_id, count(*) AS n FROM log ${where ? `WHERE ${where}` : ''} GROUP BY device_id`,
      )
      .all({ ...(docId ? { docId } : {}), ...(userId ? { userId } : {}) });
    return new Map(rows.map((r) => [r.device_id, r.n]));
  } finally {
    db.close();
  }
};

/** The newest envelope of a user's document as the relay stored it (ciphertext only), read-only. */
export const lastStoredEnvelope = (dbPath: string, userId: string, doc: DocId): Envelope => {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const row = db
      .prepare<[string, string], { device_id: string; counter: number; epoch: number; lane: number; nonce: Buffer; ct: Buffer; sig: Buffer }>(
        `SELECT device_id, counter, epoch, lane, nonce, ct, sig FROM log WHERE user_id = ? AND doc_id = ? ORDER BY seq DESC LIMIT 1`,
      )
      .get(userId, doc)!;
    return {
      doc,
      kind: 'update',
      epoch: row.epoch,
      device: row.device_id as DeviceId,
      counter: row.counter,
      lane: row.lane,
      nonce: toB64(row.nonce),
      ct: toB64(row.ct),
      sig: toB64(row.sig),
    };
  } finally {
    db.close();
  }
};

/** Document ids the relay keeps, each with the users whose namespace holds one (sorted). */
export const docOwners = (dbPath: string): Map<string, string[]> => {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const rows = db.prepare<[], { doc_id: string; user_id: string }>(`SELECT doc_id, user_id FROM docs ORDER BY doc_id, user_id`).all();
    const owners = new Map<string, string[]>();
    for (const r of rows) owners.set(r.doc_id, [...(owners.get(r.doc_id) ?? []), r.user_id]);
    return owners;
  } finally {
    db.close();
  }
};

/** GET /healthz on the relay's port; resolves to the HTTP status. */
export const healthStatus = async (port: number): Promise<number> => {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2_000) });
  await res.arrayBuffer();
  return res.status;
};
