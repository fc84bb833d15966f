import type { ClientFrame, DeviceId, DocId, Seq, TierName, UserId } from '@keel/engine';
import type { AlertKind } from '../observe/alerts.js';
import type { Logger } from '../log.js';
import type { AwarenessDrop } from '../server/awareness-gate.js';

/**
 * A connection's id on this relay: a counter, meaningless outside the process, so listeners can
 * pair `connected` with `disconnected` without an address or anything else about the peer.
 */
export type ConnId = number;

/** Frame types a refusal may name: a validated client frame's type, or `unknown` (the peer's text is never a label). */
export type RefusedFrame = ClientFrame['type'] | 'unknown';

/** Every client frame type; a new one fails to compile here until it is listed. */
const FRAME_TYPES: Readonly<Record<ClientFrame['type'], true>> = {
  hello: true,
  auth: true,
  'pair-join': true,
  'recovery-find': true,
  push: true,
  sub: true,
  unsub: true,
  ping: true,
  awareness: true,
  register: true,
  revoke: true,
  epoch: true,
  vouch: true,
  'pair-open': true,
  'pair-grant': true,
  'pair-refuse': true,
  receipt: true,
  report: true,
};

/** A frame type as a label: a known type as it is, anything else `unknown`, so a peer cannot mint labels. */
export const frameLabel = (type: string): RefusedFrame => (Object.hasOwn(FRAME_TYPES, type) ? (type as ClientFrame['type']) : 'unknown');

/** Where on the HTTP side a request was refused (see server/http-codes.ts, webhooks/webhook-codes.ts). */
export type HttpRefusalArea = 'connection' | 'admin' | 'webhook' | 'metrics';

/** How a pairing step ended; `code` on a refusal is one of ErrorCode's PAIRING_* (or LIMIT_EXCEEDED). */
export type PairingOutcome = 'opened' | 'joined' | 'granted' | 'refused' | 'failed';

/**
 * Every event the relay emits, by name, with its payload. Payloads carry pseudonymous ids only
 * (UserId, DeviceId, DocId — already an opaque hash), sizes, codes and durations in ms: never a
 * document name, plaintext, ciphertext, an address or anything a payment provider said about a
 * person. A listener may therefore log or export any field.
 */
export interface RelayEventMap {
  /** A WebSocket was accepted (before authentication). */
  connected: { readonly conn: ConnId };
  /**
   * A WebSocket closed (any reason). `user`/`device` are set when it had authenticated; `code` is
   * the WebSocket close code (1006 when the socket was cut); `durationMs` since `connected`.
   */
  disconnected: { readonly conn: ConnId; readonly user?: UserId; readonly device?: DeviceId; readonly code: number; readonly durationMs: number };
  /** A device proved its key and got `ready`. `newUser`: this handshake registered the user's first device. */
  authenticated: { readonly conn: ConnId; readonly user: UserId; readonly device: DeviceId; readonly tier: TierName; readonly newUser: boolean };
  /** A handshake was refused (`code` is an ErrorCode: AUTH_FAILED, UNKNOWN_DEVICE, AUTH_TIMEOUT, …). */
  authFailed: { readonly code: string };
  /**
   * A frame or envelope was refused. `kind`: `bad-frame` (failed its schema or came at the wrong
   * time; counts against the bad-frame budget), `rejected` (an envelope refused), `deferred` (an
   * envelope the device should send again later). `frame` is the validated frame type, or `unknown`.
   */
  refused: {
    readonly user?: UserId;
    readonly device?: DeviceId;
    readonly code: string;
    readonly frame: RefusedFrame;
    readonly kind: 'bad-frame' | 'rejected' | 'deferred';
  };
  /**
   * Envelopes of one document and lane became durable. `latencyMs`: from the push frame's read
   * off the socket to the commit's fsync. Resends the log already held are not counted.
   */
  committed: {
    readonly user: UserId;
    readonly device: DeviceId;
    readonly doc: DocId;
    readonly lane: number;
    readonly envelopes: number;
    readonly bytes: number;
    readonly latencyMs: number;
    /** The tier enforced on the device when it pushed (its `maxResponseMs` is the promise). */
    readonly tier: TierName;
  };
  /** One group-commit transaction: how many envelopes, how long the transaction took. */
  commitBatch: { readonly envelopes: number; readonly ms: number };
  /** One `updates` or `snapshot` frame queued to a device: entries in it, ciphertext bytes, its lane. */
  delivered: { readonly user: UserId; readonly device: DeviceId; readonly doc: DocId; readonly lane: number; readonly entries: number; readonly bytes: number };
  /** A user's tier changed (payment, grace period, operator). `from` is unknown when no device of the user was online. */
  tierChanged: { readonly user: UserId; readonly from?: TierName; readonly to: TierName };
  /** A device was registered (first device, certified by a live device, by the recovery key, or paired). */
  deviceRegistered: { readonly user: UserId; readonly device: DeviceId };
  /** A device was revoked (by another device, or by a recovery reset). */
  deviceRevoked: { readonly user: UserId; readonly device: DeviceId };
  /** A pairing step. */
  pairing: { readonly outcome: PairingOutcome; readonly code?: string };
  /**
   * An HTTP request refused before it proved anything (slow, malformed, no or wrong token, bad
   * webhook signature): anyone can cause these, so they are counted, never audited. `code` is
   * from the area's fixed set of codes.
   */
  httpRefused: { readonly area: HttpRefusalArea; readonly code: string };
  /** A payment webhook delivery was answered: `outcome` is a WebhookRejection code or the applied outcome. */
  webhook: { readonly outcome: string };
  /** An awareness frame went to `recipients` devices. Counts only: awareness is never stored or logged. */
  awarenessForwarded: { readonly recipients: number };
  /** An awareness frame (or one recipient's copy) was dropped. */
  awarenessDropped: { readonly reason: AwarenessDrop };
  /** A user passed the crisis-lane anomaly threshold today, all devices together (once per user per UTC day); `device` is the one whose push crossed it. */
  crisisAnomaly: { readonly user: UserId; readonly device: DeviceId; readonly bytes: number };
  /**
   * Crisis-lane entries of a document were fanned out live to `device` (connected, subscribed,
   * not their author): the crisis SLA watch waits for its receipt. `receivedAt`: when each entry's
   * push frame was read off the socket.
   */
  crisisFannedOut: {
    readonly user: UserId;
    readonly device: DeviceId;
    readonly doc: DocId;
    readonly entries: readonly { readonly seq: Seq; readonly receivedAt: number }[];
    /** Queued to the device now; false: held while its catch-up of the document runs (which sends them). */
    readonly live: boolean;
  };
  /** `device` confirmed it applied these crisis-lane entries (a `receipt` frame). */
  receipt: { readonly user: UserId; readonly device: DeviceId; readonly doc: DocId; readonly seqs: readonly Seq[] };
  /** The last connection of a device closed: nothing more is waited for from it. */
  deviceOffline: { readonly user: UserId; readonly device: DeviceId };
  /** A crisis-lane entry's receipt came: reaching the relay → applied on `device`; `breached` past 200 ms. */
  crisisMeasured: {
    readonly user: UserId;
    readonly device: DeviceId;
    readonly doc: DocId;
    readonly seq: Seq;
    readonly latencyMs: number;
    /**
     * Of `latencyMs`, the part inside the relay (push read → queued to this device: admission,
     * commit, fan-out); the rest is the trip out, the device's applying and the receipt's trip
     * back. Says where a breach happened.
     */
    readonly relayMs: number;
    /**
     * The device was catching up the document when the entry came: it went out with that
     * catch-up (a task of the work queue), not live, and `relayMs` ends where it was handed to it.
     */
    readonly heldForCatchUp: boolean;
    /** Over the SLA. */
    readonly breached: boolean;
  };
  /** A connected device did not confirm a crisis-lane entry within the receipt timeout. */
  crisisReceiptMissing: { readonly user: UserId; readonly device: DeviceId; readonly doc: DocId; readonly seq: Seq; readonly waitedMs: number };
  /** A device refused an envelope of its user for a lane above its class's ceiling (`report` frame). */
  laneReported: { readonly user: UserId; readonly reporter: DeviceId; readonly author: DeviceId; readonly doc: DocId; readonly lane: number };
  /** A `POST /crisis` was answered: `outcome` is a CrisisSignalCode (DELIVERED, DUPLICATE, or why it was refused). */
  crisisSignal: { readonly outcome: string };
  /** An operator alert was raised (see observe/alerts.ts). */
  alert: { readonly kind: AlertKind };
}

export type RelayEventName = keyof RelayEventMap;
export type RelayEventListener<K extends RelayEventName> = (payload: RelayEventMap[K]) => void;

/**
 * The relay's event bus, in the spirit of Hocuspocus's extension hooks: metrics, logs and later
 * audit or SLA watchers subscribe here instead of being threaded through the hot path.
 */
export interface RelayEvents {
  /** Adds a listener; returns the function that removes it. */
  on<K extends RelayEventName>(name: K, listener: RelayEventListener<K>): () => void;
  /**
   * Calls every listener of `name` synchronously, in the order they were added. A listener that
   * throws is logged and skipped; the emitter never sees it. Without listeners it costs one map lookup.
   */
  emit<K extends RelayEventName>(name: K, payload: RelayEventMap[K]): void;
  /** Whether anyone listens to `name`: lets an emitter skip building a costly payload. */
  has(name: RelayEventName): boolean;
  /** The bus's clock (the relay's `now`), for listeners that measure durations. */
  now(): number;
}

export interface RelayEventsDeps {
  readonly log: Logger;
  readonly now: () => number;
}

/** Creates an empty bus. */
export const createRelayEvents = (deps: RelayEventsDeps): RelayEvents => {
  // Arrays are replaced, never mutated, so a listener removed (or added) during an emit does not
  // change the list being walked. Each registration is its own entry: a function added twice is
  // removed one registration at a time.
  const listeners = new Map<RelayEventName, readonly { readonly fn: (payload: never) => void }[]>();
  return {
    on(name, listener) {
      const entry = { fn: listener as (payload: never) => void };
      listeners.set(name, [...(listeners.get(name) ?? []), entry]);
      return () => {
        const rest = (listeners.get(name) ?? []).filter((e) => e !== entry);
        if (rest.length > 0) listeners.set(name, rest);
        else listeners.delete(name);
      };
    },
    emit(name, payload) {
      const list = listeners.get(name);
      if (list === undefined) return;
      for (const { fn } of list) {
        try {
          (fn as RelayEventListener<typeof name>)(payload);
        } catch (error) {
          // A listener's bug must never break the route an update takes.
          deps.log.log('error', 'event listener failed', { event: name, error: error instanceof Error ? error.message : String(error) });
        }
      }
    },
    has(name) {
      return listeners.has(name);
    },
    now: deps.now,
  };
};
