import {
  type ClientFrame,
  CloseCode,
  ErrorCode,
  FINAL_CLOSE_CODES,
  type KeelError,
  PROTOCOL_VERSION,
  type RelayFrame,
  type RelayId,
  encodeFrame,
  inboundFrameBudget,
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
  /**
   * Sets the largest frame the socket reads from now on, refused at the frame's header before
   * it is buffered (Node's `ws`). Browsers' WebSocket has no such limit: there the link refuses
   * an oversized frame only after the browser buffered it.
   */
  limitInbound?(bytes: number): void;
  /** Drops the connection at once, without waiting for the peer's close (ws); `close` is used where absent. */
  terminate?(): void;
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
  /**
   * Whether this device holds a verified revocation of itself. Asked when the relay closes with
   * 4003 (DEVICE_REVOKED): only then is that close final; the code alone is something any relay
   * can send, so without the proof the link keeps retrying with backoff.
   */
  holdsOwnRevocation(): boolean;
}

const OPEN = 1;
/** The code `ws` gives a frame over its maxPayload (it then closes with 1009). */
const WS_FRAME_TOO_LARGE = 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';

/**
 * How the link notices a dead connection on its own: after `ready` it sends a `ping` every
 * `intervalMs` and takes the link for dead when nothing at all — the `pong`, or any other
 * frame — comes back within `timeoutMs`. A half-open socket (a proxy that drops traffic
 * silently) is found within their sum.
 */
export interface LivenessOptions {
  readonly intervalMs: number;
  readonly timeoutMs: number;
}

/**
 * Found within 7.5 s (a ping every 2.5 s, 5 s of silence after it): a crisis edit never sits
 * behind a dead link for longer, and a relay busy enough to take seconds to read a ping is not
 * taken for dead while its other frames keep arriving.
 */
export const DEFAULT_LIVENESS: LivenessOptions = { intervalMs: 2_500, timeoutMs: 5_000 };

/**
 * One authenticated connection to the relay that comes back by itself: connect, hello,
 * answer the challenge, then pass frames up. Reconnects with backoff until stopped or until
 * the relay closes with a final code (refused; revoked only when this device holds the proof).
 *
 * Every frame is read within a budget: 1 MiB before `ready`, then the relay's announced limit
 * plus a margin (at most WireLimits.maxInboundFrameBytes), and a JSON depth and value budget
 * checked before parsing. A frame over either is refused, reported and the socket dropped.
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
  /** The largest frame read on the current socket: the default before `ready`, then by the relay's announced limit. */
  #inboundBudget = inboundFrameBudget();
  /**
   * The last socket was dropped for breaking a budget: the next `ready` does not reset the
   * backoff, so a relay that authenticates and then floods gets slower and slower reconnects.
   */
  #penalized = false;
  readonly #liveness: LivenessOptions;
  /** Sent in `hello` while this device could create its user (a relay with `--registration token`). */
  readonly #signupToken: string | undefined;
  /** Sends the next ping on the current authenticated socket. */
  #probe: ReturnType<typeof setInterval> | undefined;
  /** The ping waiting for its pong, and when the link counts as dead without it. */
  #awaiting: { readonly id: number; readonly deadline: ReturnType<typeof setTimeout> } | undefined;
  #pingId = 0;
  #lastContact: number | undefined;
  /** The platform's connectivity events (browsers), removed on stop. */
  readonly #unlisten: () => void;

  constructor(
    url: string,
    identity: Identity,
    createSocket: WebSocketFactory,
    backoff: Backoff,
    handlers: LinkHandlers,
    pinned?: RelayId,
    liveness: LivenessOptions = DEFAULT_LIVENESS,
    signupToken?: string,
  ) {
    this.#signupToken = signupToken;
    this.#url = url;
    this.#identity = identity;
    this.#createSocket = createSocket;
    this.#backoff = backoff;
    this.#handlers = handlers;
    this.#pinned = pinned;
    this.#liveness = liveness;
    this.#unlisten = this.#listenToPlatform();
  }

  /** When the relay last answered this device (any frame, a pong included); undefined before the first. */
  get lastContactAt(): number | undefined {
    return this.#lastContact;
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
    this.#stopProbe();
    this.#unlisten();
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
    this.#inboundBudget = inboundFrameBudget();
    const { user, device, cert, chain, escrow } = this.#identity;
    // The escrow goes along while this device's certificates could still register the user's first device.
    const firstDevice = (chain[0] ?? cert).issuer === null;
    socket.onopen = () => {
      socket.limitInbound?.(this.#inboundBudget);
      const hello = { type: 'hello', v: PROTOCOL_VERSION, user: user.userId, device: device.deviceId, cert } as const;
      socket.send(
        encodeFrame({
          ...hello,
          ...(chain.length > 0 ? { chain: [...chain] } : {}),
          ...(firstDevice && escrow !== undefined ? { escrow } : {}),
          ...(firstDevice && this.#signupToken !== undefined ? { signup: this.#signupToken } : {}),
        }),
      );
    };
    socket.onmessage = (event) => {
      if (this.#socket !== socket) return;
      this.#lastContact = Date.now();
      // Anything from the relay shows the link alive: a busy relay's pong may wait behind the
      // frames it is sending (or behind this device's own pushes, which it reads in turn).
      this.#heardFrom(socket);
      const data = typeof event.data === 'string' ? event.data : new Uint8Array(0);
      const parsed = parseRelayFrame(data, this.#inboundBudget);
      if (!parsed.ok) {
        if (parsed.error.code === ErrorCode.FRAME_TOO_LARGE || parsed.error.code === ErrorCode.JSON_BUDGET) {
          this.#dropForBudget(socket, parsed.error.code, parsed.error.message);
          return;
        }
        this.#handlers.onError({ code: parsed.error.code, message: `relay sent a bad frame: ${parsed.error.message}` });
        return;
      }
      this.#onFrame(socket, parsed.value);
    };
    socket.onerror = (event) => {
      // A close event follows; reconnection is handled there. A frame `ws` refused at its header is reported here.
      if (this.#socket !== socket) return;
      const error = (event as { error?: { code?: unknown; message?: unknown } } | null)?.error;
      if (error?.code === WS_FRAME_TOO_LARGE) {
        this.#dropForBudget(socket, ErrorCode.FRAME_TOO_LARGE, `frame over ${this.#inboundBudget} bytes, refused at its header`);
      } else if (typeof error?.code === 'string' && error.code.startsWith('WS_ERR_')) {
        // A frame that breaks the WebSocket protocol (a compressed frame nobody negotiated, say): ws closes with 1002.
        this.#handlers.onError({ code: ErrorCode.UNEXPECTED_FRAME, message: `relay broke the WebSocket protocol: ${String(error.message)}` });
      }
    };
    socket.onclose = (event) => {
      if (this.#socket !== socket) return;
      this.#stopProbe();
      this.#socket = undefined;
      this.#authenticated = false;
      if (this.#state === 'stopped') return;
      if (event.code === CloseCode.DEVICE_REVOKED && !this.#handlers.holdsOwnRevocation()) {
        // Any relay can send 4003; without a verified revocation of this device it proves nothing.
        this.#handlers.onError({
          code: ErrorCode.DEVICE_REVOKED,
          message: 'relay closed with 4003 (revoked) but this device holds no verified revocation of itself; retrying',
        });
        this.#setState('offline');
        this.#scheduleRetry();
        return;
      }
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
      this.#inboundBudget = inboundFrameBudget(frame.limits?.maxFrameBytes);
      socket.limitInbound?.(this.#inboundBudget);
      if (this.#penalized) this.#penalized = false;
      else this.#backoff.reset();
      this.#setState('ready');
      this.#startProbe(socket);
      this.#handlers.onReady(frame);
      return;
    }
    if (frame.type === 'pong') return;
    if (frame.type === 'error' && !frame.doc) this.#handlers.onError({ code: frame.code, message: frame.message });
    // Before `ready` the relay has not shown it is the pinned one: nothing it says goes further —
    // except, once the pinned relay's challenge is answered, a `revoked` frame about this device:
    // the record a revoked device is sent before its 4003 close, which the client verifies itself.
    if (!this.#authenticated) {
      if (frame.type === 'revoked' && this.#answered !== undefined && frame.device === this.#identity.device.deviceId) this.#handlers.onFrame(frame);
      return;
    }
    this.#handlers.onFrame(frame);
  }

  /**
   * A frame over a budget: refused unread, reported, and the socket dropped at once (a hostile
   * relay need not answer a close handshake); the link reconnects with backoff.
   */
  #dropForBudget(socket: WebSocketLike, code: ErrorCode, message: string): void {
    this.#penalized = true;
    this.#handlers.onError({ code, message: `relay sent a frame over budget, reconnecting: ${message}` });
    this.#abandon(socket, 'frame over budget');
  }

  /** Another deployment's challenge: no answer, no retry — reconnecting would meet the same relay. */
  #refuseRelay(socket: WebSocketLike, named: RelayId, pinned: RelayId): void {
    this.#stopProbe();
    this.#socket = undefined;
    socket.close(1000, 'relay id mismatch');
    this.#handlers.onError({
      code: ErrorCode.RELAY_MISMATCH,
      message: `the relay presented id "${named}", but this device is pinned to "${pinned}"; it did not answer the challenge`,
      final: true,
    });
    this.#setState('stopped');
  }

  #startProbe(socket: WebSocketLike): void {
    this.#stopProbe();
    this.#probe = setInterval(() => {
      if (this.#socket !== socket || this.#awaiting || socket.readyState !== OPEN) return;
      const id = (this.#pingId = (this.#pingId + 1) % 0x7fff_ffff);
      this.#awaiting = { id, deadline: this.#armDeadline(socket, this.#liveness.timeoutMs, true) };
      socket.send(encodeFrame({ type: 'ping', id }));
    }, this.#liveness.intervalMs);
  }

  /**
   * The wait for an answer. A deadline that fires well past its time means this process did not
   * run meanwhile (a long task, a throttled background tab, a suspended phone): frames may sit
   * unread in the socket, so the verdict waits once more, a short grace in which they are read
   * (any frame answers the ping). Only once: a dead link in a tab whose timers are always late is
   * still found, one grace later.
   */
  #armDeadline(socket: WebSocketLike, ms: number, mayWait: boolean): ReturnType<typeof setTimeout> {
    const due = Date.now() + ms;
    return setTimeout(() => {
      if (this.#socket !== socket || !this.#awaiting) return;
      if (mayWait && Date.now() - due > this.#liveness.timeoutMs / 2) {
        this.#awaiting = { id: this.#awaiting.id, deadline: this.#armDeadline(socket, Math.min(1_000, this.#liveness.timeoutMs / 2), false) };
      } else {
        this.#linkDead(socket);
      }
    }, ms);
  }

  /** A frame arrived: the ping waiting for an answer has one (whichever frame it is). */
  #heardFrom(socket: WebSocketLike): void {
    if (this.#socket !== socket || !this.#awaiting) return;
    clearTimeout(this.#awaiting.deadline);
    this.#awaiting = undefined;
  }

  #stopProbe(): void {
    clearInterval(this.#probe);
    this.#probe = undefined;
    if (this.#awaiting) clearTimeout(this.#awaiting.deadline);
    this.#awaiting = undefined;
  }

  /**
   * No pong in time: the socket is given up at once — a close handshake on a dead link would
   * wait for an answer that never comes — and the link reconnects with backoff.
   */
  #linkDead(socket: WebSocketLike): void {
    if (this.#socket !== socket) return;
    this.#handlers.onError({ code: ErrorCode.LINK_DEAD, message: `nothing came from the relay within ${this.#liveness.timeoutMs} ms of a ping; reconnecting` });
    this.#abandon(socket, 'link dead');
  }

  /**
   * Gives the socket up at once — no close handshake, which a dead or hostile relay need not
   * answer — and reconnects with backoff.
   */
  #abandon(socket: WebSocketLike, reason: string): void {
    this.#stopProbe();
    this.#socket = undefined;
    this.#authenticated = false;
    if (socket.terminate) socket.terminate();
    else socket.close(1000, reason);
    this.#setState('offline');
    this.#scheduleRetry();
  }

  /**
   * A browser's `offline` event drops the link at once (nothing it sends would arrive) and
   * `online` reconnects at once instead of waiting out the backoff. Where the platform has no
   * such events (Node), nothing is listened to.
   */
  #listenToPlatform(): () => void {
    const target = globalThis as { addEventListener?: (type: string, listener: () => void) => void; removeEventListener?: (type: string, listener: () => void) => void };
    if (typeof target.addEventListener !== 'function' || typeof target.removeEventListener !== 'function') return () => {};
    const offline = () => {
      const socket = this.#socket;
      if (!socket || this.#state === 'stopped') return;
      this.#abandon(socket, 'platform offline');
    };
    const online = () => {
      if (this.#state !== 'offline') return;
      clearTimeout(this.#retry);
      this.#backoff.reset();
      this.#connect();
    };
    target.addEventListener('offline', offline);
    target.addEventListener('online', online);
    return () => {
      target.removeEventListener?.('offline', offline);
      target.removeEventListener?.('online', online);
    };
  }

  #scheduleRetry(): void {
    clearTimeout(this.#retry);
    this.#retry = setTimeout(() => {
      if (this.#state === 'offline' || this.#state === 'connecting') this.#connect();
    }, this.#backoff.next());
  }
}
