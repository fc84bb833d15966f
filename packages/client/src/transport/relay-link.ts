import {
  type ClientFrame,
  ErrorCode,
  FINAL_CLOSE_CODES,
  type KeelError,
  PROTOCOL_VERSION,
  type RelayFrame,
  type RelayId,
  encodeFrame,
  parseRelayFrame,
  signChallenge,
} from '@keel/engine';
import type { Identity } from '../identity.js';
import type { Backoff } from './backoff.js';

/** The subset of the WHATWG WebSocket the link uses; browsers' and `ws`'s both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type WebSocketFactory = (url: string) => WebSocketLike;

export type LinkState = 'idle' | 'connecting' | 'ready' | 'offline' | 'stopped';

export interface LinkHandlers {
  onState(state: LinkState): void;
  /** The relay accepted this device; `ready` carries the user's device certificates. */
  onReady(frame: Extract<RelayFrame, { type: 'ready' }>): void;
  /** Any frame after `ready`. */
  onFrame(frame: RelayFrame): void;
  /** A relay error, a protocol violation by the relay, or a final close. */
  onError(error: KeelError & { final?: boolean }): void;
  /** First contact: the relay id this link pinned when the relay accepted the device; keep it. */
  onPin(relay: RelayId): void;
}

const OPEN = 1;
/** Frames from the relay larger than this are refused (the relay's own limit is lower). */
const MAX_INBOUND_CHARS = 96 * 1024 * 1024;

/**
 * One authenticated connection to the relay that comes back by itself: connect, hello,
 * answer the challenge, then pass frames up. Reconnects with backoff until stopped or until
 * the relay closes with a final code (revoked, refused).
 *
 * The link answers only challenges that name its pinned relay id (given, or taken from the
 * first challenge that led to `ready`): a relay in the middle that forwards another
 * deployment's challenge gets no signature, and the link stops for good (RELAY_MISMATCH).
 */
export class RelayLink {
  readonly #url: string;
  readonly #identity: Identity;
  readonly #createSocket: WebSocketFactory;
  readonly #backoff: Backoff;
  readonly #handlers: LinkHandlers;
  #socket: WebSocketLike | undefined;
  #state: LinkState = 'idle';
  #authenticated = false;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #pinned: RelayId | undefined;
  /** The relay id of the challenge answered on the current socket; `ready` is accepted only after one. */
  #answered: RelayId | undefined;

  constructor(url: string, identity: Identity, createSocket: WebSocketFactory, backoff: Backoff, handlers: LinkHandlers, pinned?: RelayId) {
    this.#url = url;
    this.#identity = identity;
    this.#createSocket = createSocket;
    this.#backoff = backoff;
    this.#handlers = handlers;
    this.#pinned = pinned;
  }

  get state(): LinkState {
    return this.#state;
  }

  /** The relay id this link answers challenges of; undefined until first contact when none was given. */
  get relayId(): RelayId | undefined {
    return this.#pinned;
  }

  start(): void {
    if (this.#state !== 'idle' && this.#state !== 'offline') return;
    this.#connect();
  }

  /** Sends when authenticated; returns false (and sends nothing) otherwise. */
  send(frame: ClientFrame): boolean {
    if (!this.#authenticated || this.#socket?.readyState !== OPEN) return false;
    this.#socket.send(encodeFrame(frame));
    return true;
  }

  /** Drops the current socket and reconnects (after backoff). */
  reconnect(): void {
    if (this.#state === 'stopped') return;
    this.#socket?.close(1000, 'reconnect');
  }

  stop(): void {
    this.#setState('stopped');
    clearTimeout(this.#retry);
    const socket = this.#socket;
    this.#socket = undefined;
    this.#authenticated = false;
    socket?.close(1000, 'client closed');
  }

  #setState(state: LinkState): void {
    if (this.#state === state || this.#state === 'stopped') return;
    this.#state = state;
    this.#handlers.onState(state);
  }

  #connect(): void {
    this.#setState('connecting');
    let socket: WebSocketLike;
    try {
      socket = this.#createSocket(this.#url);
    } catch (error) {
      this.#handlers.onError({ code: 'INTERNAL' as ErrorCode, message: `cannot open socket: ${error instanceof Error ? error.message : String(error)}` });
      this.#scheduleRetry();
      return;
    }
    this.#socket = socket;
    this.#authenticated = false;
    this.#answered = undefined;
    const { user, device, cert, chain, escrow } = this.#identity;
    // The escrow goes along while this device's certificates could still register the user's first device.
    const firstDevice = (chain[0] ?? cert).issuer === null;
    socket.onopen = () => {
      const hello = { type: 'hello', v: PROTOCOL_VERSION, user: user.userId, device: device.deviceId, cert } as const;
      socket.send(
        encodeFrame({
          ...hello,
          ...(chain.length > 0 ? { chain: [...chain] } : {}),
          ...(firstDevice && escrow !== undefined ? { escrow } : {}),
        }),
      );
    };
    socket.onmessage = (event) => {
      if (this.#socket !== socket) return;
      const data = typeof event.data === 'string' ? event.data : new Uint8Array(0);
      const parsed = parseRelayFrame(data, MAX_INBOUND_CHARS);
      if (!parsed.ok) {
        this.#handlers.onError({ code: parsed.error.code, message: `relay sent a bad frame: ${parsed.error.message}` });
        return;
      }
      this.#onFrame(socket, parsed.value);
    };
    socket.onerror = () => {
      // A close event always follows; reconnection is handled there.
    };
    socket.onclose = (event) => {
      if (this.#socket !== socket) return;
      this.#socket = undefined;
      this.#authenticated = false;
      if (this.#state === 'stopped') return;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        this.#handlers.onError({ code: (event.reason || 'AUTH_FAILED') as ErrorCode, message: `relay closed the connection for good (${event.code})`, final: true });
        this.#setState('stopped');
        return;
      }
      this.#setState('offline');
      this.#scheduleRetry();
    };
  }

  #onFrame(socket: WebSocketLike, frame: RelayFrame): void {
    if (frame.type === 'challenge') {
      if (this.#authenticated) return;
      if (this.#pinned !== undefined && frame.relay !== this.#pinned) {
        this.#refuseRelay(socket, frame.relay, this.#pinned);
        return;
      }
      const { user, device } = this.#identity;
      const sig = signChallenge(frame.relay, frame.nonce, user.userId, device.deviceId, device.secretKey);
      this.#answered = frame.relay;
      socket.send(encodeFrame({ type: 'auth', sig }));
      return;
    }
    if (frame.type === 'ready') {
      // Without an answered challenge nothing ties this relay to the pin: treat it as a broken relay.
      if (this.#answered === undefined) {
        this.#handlers.onError({ code: ErrorCode.UNEXPECTED_FRAME, message: 'relay sent ready before a challenge was answered' });
        socket.close(1000, 'ready before challenge');
        return;
      }
      if (this.#pinned === undefined) {
        this.#pinned = this.#answered;
        this.#handlers.onPin(this.#answered);
      }
      this.#authenticated = true;
      this.#backoff.reset();
      this.#setState('ready');
      this.#handlers.onReady(frame);
      return;
    }
    if (frame.type === 'error' && !frame.doc) this.#handlers.onError({ code: frame.code, message: frame.message });
    // Before `ready` the relay has not shown it is the pinned one: nothing it says goes further.
    if (!this.#authenticated) return;
    this.#handlers.onFrame(frame);
  }

  /** Another deployment's challenge: no answer, no retry — reconnecting would meet the same relay. */
  #refuseRelay(socket: WebSocketLike, named: RelayId, pinned: RelayId): void {
    this.#socket = undefined;
    socket.close(1000, 'relay id mismatch');
    this.#handlers.onError({
      code: ErrorCode.RELAY_MISMATCH,
      message: `the relay presented id "${named}", but this device is pinned to "${pinned}"; it did not answer the challenge`,
      final: true,
    });
    this.#setState('stopped');
  }

  #scheduleRetry(): void {
    clearTimeout(this.#retry);
    this.#retry = setTimeout(() => {
      if (this.#state === 'offline' || this.#state === 'connecting') this.#connect();
    }, this.#backoff.next());
  }
}
