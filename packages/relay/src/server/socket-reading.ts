/** How often a connection whose reading is held is told the link is alive; well inside a client's 5 s ping timeout. */
export const HELD_KEEPALIVE_MS = 2_000;

/** The part of a socket whose reading can stop (ws's WebSocket). */
export interface Pausable {
  pause(): void;
  resume(): void;
}

/**
 * Who holds a connection's reading. It stops while anyone holds it — the work queue for this
 * connection's backlog, an awareness flood for a while — and what the peer sends meanwhile waits
 * in TCP buffers, not in the relay's memory. The peer's pings wait unread too, so while reading
 * is held `keepalive` runs every `keepaliveMs` (the connection sends an unsolicited pong): a busy
 * relay is slow, not dead, and a device that reconnected over it would only add a handshake to
 * the backlog.
 */
export class SocketReading {
  readonly #socket: Pausable;
  readonly #keepalive: () => void;
  readonly #keepaliveMs: number;
  #holds = 0;
  #keepaliveTimer: ReturnType<typeof setInterval> | undefined;
  #timedHold: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor(socket: Pausable, keepalive: () => void, keepaliveMs = HELD_KEEPALIVE_MS) {
    this.#socket = socket;
    this.#keepalive = keepalive;
    this.#keepaliveMs = keepaliveMs;
  }

  /** Whether a hold of holdFor() runs now. */
  get timedHold(): boolean {
    return this.#timedHold !== undefined;
  }

  hold(): void {
    if (this.#closed || this.#holds++ > 0) return;
    this.#socket.pause();
    this.#keepaliveTimer = setInterval(this.#keepalive, this.#keepaliveMs);
  }

  release(): void {
    if (this.#closed || this.#holds === 0 || --this.#holds > 0) return;
    clearInterval(this.#keepaliveTimer);
    this.#keepaliveTimer = undefined;
    this.#socket.resume();
  }

  /** Holds reading for `ms`, unless a timed hold runs already (it is not extended). */
  holdFor(ms: number): void {
    if (this.#closed || this.#timedHold !== undefined) return;
    this.hold();
    this.#timedHold = setTimeout(() => {
      this.#timedHold = undefined;
      this.release();
    }, ms);
  }

  /**
   * The connection is closing: reading resumes for good (the peer's close frame must be seen)
   * and every timer stops. Holds after this change nothing.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#keepaliveTimer);
    clearTimeout(this.#timedHold);
    this.#holds = 0;
    this.#socket.resume();
  }
}
