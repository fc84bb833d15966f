import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import {
  type ClientFrame,
  DEFAULT_TIERS,
  type DeviceCertificate,
  type DocId,
  type Envelope,
  type HelloFrame,
  PROTOCOL_VERSION,
  type RelayFrame,
  type RelayId,
  RelayIdSchema,
  type Seq,
  type TierState,
  createChallengeNonce,
  encodeFrame,
  fromB64,
  parseClientFrame,
  parseRelayFrame,
  verifyChallenge,
} from '@keel/engine';
import { type ClientStore, type DocSpec, createIdentity, linkNewDevice } from '@keel/client';
import { WebSocket, WebSocketServer, type ServerOptions } from 'ws';
import { waitFor } from './devices.js';
import type { TestScope } from './scope.js';

/**
 * A malicious relay for tests of what a device must not believe. Two modes:
 *
 * - **standalone**: a WebSocket server that authenticates a real device correctly (challenge,
 *   signature check), sends the `ready` the test composes, and otherwise behaves as a minimal
 *   honest in-memory relay (per-document log, acks, catch-up, fan-out) until the test makes it
 *   lie through the interceptors or by sending frames of its own;
 * - **man in the middle**: in front of the real relay, forwarding the real challenge (so a
 *   pinned device authenticates for real) and every frame both ways, except what the
 *   interceptors rewrite, drop or add.
 *
 * Every frame that passes is recorded, parsed. Bounded: it holds what one test sends.
 */
export interface MaliciousRelay {
  readonly url: string;
  /** The relay id its challenges name (standalone), or undefined (man in the middle: the real one's). */
  readonly relayId: RelayId | undefined;
  /** Frames devices sent, one list per connection, in order (hello and auth included). */
  readonly fromDevices: readonly ClientFrame[][];
  /** Frames that reached devices from the relay side (after interception), in order. */
  readonly toDevices: readonly RelayFrame[];
  /** Connections that reached `ready` so far (reconnects count). */
  readonly sessions: number;
  /** Waits until at least `n` sessions reached `ready`. */
  ready(n?: number, timeoutMs?: number): Promise<void>;
  /** Sends to every device connection past `ready`: a frame, or raw text (oversized, malformed…). */
  toDevice(frame: RelayFrame | string): void;
  /** Man in the middle: sends to the real relay on every open uplink, as the device. */
  toRelay(frame: ClientFrame): void;
  /**
   * Rewrites what the relay side says to devices: return the frames (or raw texts) to deliver
   * instead, [] to drop, undefined to pass the frame unchanged. Standalone: applies to the
   * frames its honest core produces; `challenge` and `ready` are not intercepted.
   */
  interceptRelay(fn: ((frame: RelayFrame) => readonly (RelayFrame | string)[] | undefined) | undefined): void;
  /**
   * Rewrites what devices say: return frames to forward instead (man in the middle: to the real
   * relay; standalone: to its honest core), [] to drop, undefined to pass. `hello`/`auth` pass.
   */
  interceptDevice(fn: ((frame: ClientFrame) => readonly ClientFrame[] | undefined) | undefined): void;
  /** Closes every device connection with `code` (a forged 4003, say). */
  closeDevices(code: number, reason: string): void;
  /** Cuts every device connection without a close frame. */
  dropDevices(): void;
  /** The server side of every device connection past `ready` (to write raw WebSocket frames, or read what was negotiated). */
  deviceSockets(): readonly WebSocket[];
  /** Standalone: the log it keeps for `doc` (what it acknowledged), in seq order. */
  log(doc: DocId): readonly { seq: Seq; env: Envelope }[];
  close(): Promise<void>;
}

export interface StandaloneOptions {
  readonly mode: 'standalone';
  readonly relayId?: string;
  /** The `ready` for a device that answered the challenge; default: its own certificates, premium. */
  readonly ready?: (hello: HelloFrame) => Omit<Extract<RelayFrame, { type: 'ready' }>, 'type' | 'user' | 'device'> & { readonly certs: DeviceCertificate[] };
  /** `ws` server options (permessage-deflate on, say, to try a decompression bomb). */
  readonly server?: Omit<ServerOptions, 'host' | 'port'>;
}

export interface MiddleOptions {
  readonly mode: 'mitm';
  /** The real relay's ws:// URL. */
  readonly upstream: string;
}

const PREMIUM: TierState = { name: 'premium', policy: DEFAULT_TIERS.premium, since: 0 };
const PARSE_LIMIT = 256 * 1024 * 1024;
const asSeq = (n: number) => n as Seq;

const parseRelay = (text: string): RelayFrame | undefined => {
  const parsed = parseRelayFrame(text, PARSE_LIMIT);
  return parsed.ok ? parsed.value : undefined;
};

export const startMaliciousRelay = async (options: StandaloneOptions | MiddleOptions): Promise<MaliciousRelay> => {
  const standalone = options.mode === 'standalone';
  const relayId = standalone ? RelayIdSchema.parse(options.relayId ?? 'malicious-relay') : undefined;
  const wss = new WebSocketServer({ perMessageDeflate: false, ...(standalone ? options.server : {}), host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  const fromDevices: ClientFrame[][] = [];
  const toDevices: RelayFrame[] = [];
  const live = new Set<WebSocket>();
  const uplinks = new Set<WebSocket>();
  let sessions = 0;
  let relayFilter: ((frame: RelayFrame) => readonly (RelayFrame | string)[] | undefined) | undefined;
  let deviceFilter: ((frame: ClientFrame) => readonly ClientFrame[] | undefined) | undefined;

  // The honest core of standalone mode: one log per document, shared by every connection.
  const logs = new Map<DocId, { seq: Seq; env: Envelope }[]>();
  const subs = new Map<WebSocket, Set<DocId>>();
  /** Certificates every device presented in its hello, by user: the default `ready` lists them all. */
  const certsByUser = new Map<string, Map<string, DeviceCertificate>>();
  const users = new Map<WebSocket, string>();

  const deliver = (ws: WebSocket, frame: RelayFrame | string) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    if (typeof frame === 'string') {
      const parsed = parseRelay(frame);
      if (parsed) toDevices.push(parsed);
      ws.send(frame);
      return;
    }
    toDevices.push(frame);
    ws.send(encodeFrame(frame));
  };
  /** Passes a relay-side frame through the interceptor to one device. */
  const down = (ws: WebSocket, frame: RelayFrame, raw?: string) => {
    const replaced = relayFilter?.(frame);
    if (replaced === undefined) deliver(ws, raw ?? frame);
    else for (const f of replaced) deliver(ws, f);
  };

  const honestCore = (ws: WebSocket, frame: ClientFrame) => {
    switch (frame.type) {
      case 'sub':
        for (const { doc, after } of frame.docs) {
          subs.get(ws)?.add(doc);
          const entries = (logs.get(doc) ?? []).filter((e) => e.seq > after);
          for (let i = 0; i < entries.length; i += 64) down(ws, { type: 'updates', doc, items: entries.slice(i, i + 64) });
          down(ws, { type: 'synced', doc, seq: asSeq(logs.get(doc)?.at(-1)?.seq ?? 0) });
        }
        return;
      case 'push': {
        const acks: { doc: DocId; counter: number; seq: Seq }[] = [];
        for (const env of frame.envs) {
          const log = logs.get(env.doc) ?? [];
          logs.set(env.doc, log);
          const same = log.find((e) => e.env.device === env.device && e.env.counter === env.counter);
          const seq = same?.seq ?? asSeq((log.at(-1)?.seq ?? 0) + 1);
          if (!same) {
            log.push({ seq, env });
            for (const [other, docs] of subs) if (other !== ws && docs.has(env.doc)) down(other, { type: 'updates', doc: env.doc, items: [{ seq, env }] });
          }
          acks.push({ doc: env.doc, counter: env.counter, seq });
        }
        for (let i = 0; i < acks.length; i += 64) down(ws, { type: 'ack', acks: acks.slice(i, i + 64) } as RelayFrame);
        return;
      }
      case 'epoch':
        for (const other of live) down(other, { type: 'epoch', record: frame.record });
        return;
      case 'ping':
        // Answered, so a device's liveness check does not take this relay for a dead link.
        deliver(ws, { type: 'pong', id: frame.id });
        return;
      default:
        return;
    }
  };

  wss.on('connection', (ws) => {
    const seen: ClientFrame[] = [];
    fromDevices.push(seen);
    let hello: HelloFrame | undefined;
    let authenticated = false;
    const nonce = createChallengeNonce();
    let up: WebSocket | undefined;
    const queued: string[] = [];
    if (!standalone) {
      up = new WebSocket(options.upstream, { perMessageDeflate: false });
      uplinks.add(up);
      up.on('open', () => {
        for (const text of queued.splice(0)) up!.send(text);
      });
      up.on('message', (data) => {
        const text = (data as Buffer).toString('utf8');
        const frame = parseRelay(text);
        if (!frame) return deliver(ws, text);
        if (frame.type === 'ready') {
          authenticated = true;
          live.add(ws);
          sessions++;
        }
        if (!authenticated || frame.type === 'ready') return deliver(ws, text);
        down(ws, frame, text);
      });
      up.on('close', () => {
        uplinks.delete(up!);
        if (ws.readyState === WebSocket.OPEN) ws.terminate();
      });
      up.on('error', () => ws.terminate());
    }
    const upSend = (text: string) => {
      if (!up) return;
      if (up.readyState === WebSocket.OPEN) up.send(text);
      else if (up.readyState === WebSocket.CONNECTING) queued.push(text);
    };
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const text = (data as Buffer).toString('utf8');
      const parsed = parseClientFrame(text, PARSE_LIMIT);
      if (!parsed.ok) return;
      const frame = parsed.value;
      seen.push(frame);
      if (frame.type === 'hello' || frame.type === 'auth') {
        if (!standalone) return upSend(text);
        if (frame.type === 'hello') {
          hello = frame;
          const known = certsByUser.get(frame.user) ?? new Map<string, DeviceCertificate>();
          certsByUser.set(frame.user, known);
          for (const cert of [...(frame.chain ?? []), ...(frame.cert ? [frame.cert] : [])]) {
            const key = `${cert.device} ${cert.sig}`;
            if (known.has(key)) continue;
            known.set(key, cert);
            // Like a relay registering a device: the user's devices online hear of it.
            for (const [other, user] of users) if (user === frame.user && live.has(other)) down(other, { type: 'device', cert });
          }
          users.set(ws, frame.user);
          deliver(ws, { type: 'challenge', v: PROTOCOL_VERSION, relay: relayId!, nonce });
          return;
        }
        const key = hello?.cert && fromB64(hello.cert.deviceKey);
        if (!hello || !key || !verifyChallenge(relayId!, nonce, hello.user, hello.device, frame.sig, key)) {
          ws.close(4001, 'AUTH_FAILED');
          return;
        }
        authenticated = true;
        live.add(ws);
        subs.set(ws, new Set());
        sessions++;
        const composed = options.ready?.(hello) ?? { certs: [...(certsByUser.get(hello.user)?.values() ?? [])], tier: PREMIUM };
        deliver(ws, { type: 'ready', user: hello.user, device: hello.device, ...composed });
        return;
      }
      if (!authenticated) return;
      const replaced = deviceFilter?.(frame);
      for (const f of replaced ?? [frame]) {
        if (standalone) honestCore(ws, f);
        else upSend(f === frame ? text : encodeFrame(f));
      }
    });
    const gone = () => {
      live.delete(ws);
      subs.delete(ws);
      users.delete(ws);
      if (up && up.readyState !== WebSocket.CLOSED) up.terminate();
    };
    ws.on('close', gone);
    ws.on('error', gone);
  });

  const { port } = wss.address() as AddressInfo;
  return {
    url: `ws://127.0.0.1:${port}`,
    relayId,
    fromDevices,
    toDevices,
    get sessions() {
      return sessions;
    },
    ready: (n = 1, timeoutMs = 5_000) => waitFor(() => sessions >= n, timeoutMs, `${n} authenticated session(s) through the malicious relay`),
    toDevice(frame) {
      for (const ws of live) deliver(ws, frame);
    },
    toRelay(frame) {
      for (const up of uplinks) if (up.readyState === WebSocket.OPEN) up.send(encodeFrame(frame));
    },
    interceptRelay(fn) {
      relayFilter = fn;
    },
    interceptDevice(fn) {
      deviceFilter = fn;
    },
    closeDevices(code, reason) {
      for (const ws of live) ws.close(code, reason);
    },
    dropDevices() {
      for (const ws of live) ws.terminate();
    },
    deviceSockets: () => [...live],
    log: (doc) => logs.get(doc) ?? [],
    close: async () => {
      for (const client of wss.clients) client.terminate();
      for (const up of uplinks) up.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
};

/**
 * The usual stage of a man-in-the-middle test: device A of a new user connects through the
 * relay in the middle, in front of a real relay process; B, another device of the user,
 * connects to the real relay directly; both have `spec` open and A is past `ready`.
 */
export const acrossTheMiddle = async (scope: TestScope, spec: DocSpec, storeA?: ClientStore) => {
  const real = await scope.relay();
  const mitm = await startMaliciousRelay({ mode: 'mitm', upstream: real.url });
  scope.defer(() => mitm.close());
  const idA = await createIdentity();
  const a = await scope.device(mitm.url, idA, storeA);
  const b = await scope.device(real.url, await linkNewDevice(idA));
  const docA = await a.client.open(spec);
  const docB = await b.client.open(spec);
  await mitm.ready(1);
  return { real, mitm, idA, a, b, docA, docB, doc: a.client.docId(spec) };
};
