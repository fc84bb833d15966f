/** A text frame as given, or `junk` characters of filler (a JSON string) made in the attacker's process. */
export type FrameSpec = string | { readonly junk: number };

/** One attacking socket. */
export interface SocketPlan {
  /** Authenticate first as this device (serializeIdentity); otherwise the frames go before hello. */
  readonly auth?: string;
  /** Sent in order, each as soon as the socket has taken the one before (TCP backpressure applies). */
  readonly frames: readonly FrameSpec[];
  /** How many times the frame list is sent (default 1). */
  readonly rounds?: number;
  readonly gapMs?: number;
  /** false: stop reading after authentication — a peer whose replies pile up on the relay. */
  readonly read?: boolean;
  /** Keep the socket open after the last frame: until the plan's end (true) or for this many ms. */
  readonly hold?: boolean | number;
}

export interface AttackPlan {
  readonly url: string;
  readonly sockets: readonly SocketPlan[];
  /** Runs the sockets again (new connections) this many times, within `durationMs`. */
  readonly waves?: number;
  readonly durationMs: number;
  /** The local address to connect from (any 127.x.y.z on Linux), so a test can be "another address". */
  readonly localAddress?: string;
}

export interface AttackReport {
  opened: number;
  authenticated: number;
  sent: number;
  /** How the relay closed the attacker's sockets: close code → count. */
  closes: Record<number, number>;
  /** Upgrades the relay refused with an HTTP status instead of a WebSocket: status → count. */
  refused: Record<number, number>;
  errors: string[];
}
