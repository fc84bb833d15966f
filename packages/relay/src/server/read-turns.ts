/**
 * Bytes of frames one socket may have read in one turn of the event loop, past the turn's first
 * frame (read whatever its size: a frame is at most `--max-payload`).
 */
export const READ_BYTES_PER_TURN = 64 * 1024;

/** The part of SocketReading a reader needs: stop the socket while frames wait, read again after. */
export interface ReadHold {
  hold(): void;
  release(): void;
}

export interface ReadTurnsOptions {
  readonly bytesPerTurn?: number;
  /** Runs `fn` on the next turn (setImmediate; a test steps turns by hand). */
  readonly nextTurn?: (fn: () => void) => { cancel(): void };
}

const onNextImmediate = (fn: () => void): { cancel(): void } => {
  const handle = setImmediate(fn);
  return { cancel: () => clearImmediate(handle) };
};

/**
 * How much of what one socket sent the relay reads in one turn of its event loop. libuv reads a
 * ready socket up to 32 times per turn (2 MiB), and ws hands over every frame in those reads at
 * once: five sockets writing bursts of subscription frames held the loop for 110 ms. Here the
 * frames of a turn are read while they add up to `bytesPerTurn`; past it they wait for the next
 * turn in order and the socket is not read meanwhile, so what waits is at most the rest of the
 * read in hand — the rest stays in TCP buffers. An honest device's few small frames (a push, a
 * receipt, a subscription) are read at once, as before.
 */
export class ReadTurns<T extends { readonly length: number }> {
  readonly #reading: ReadHold;
  readonly #read: (frame: T) => void;
  readonly #bytesPerTurn: number;
  readonly #nextTurn: (fn: () => void) => { cancel(): void };
  readonly #waiting: T[] = [];
  /** Bytes read this turn; a new turn starts at the callback scheduled below. */
  #spent = 0;
  #turn: { cancel(): void } | undefined;
  #closed = false;

  constructor(reading: ReadHold, read: (frame: T) => void, options: ReadTurnsOptions = {}) {
    this.#reading = reading;
    this.#read = read;
    this.#bytesPerTurn = options.bytesPerTurn ?? READ_BYTES_PER_TURN;
    this.#nextTurn = options.nextTurn ?? onNextImmediate;
  }

  /** Frames waiting for a later turn. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** A frame came off the socket: read now, or after the ones waiting if this turn's bytes are spent. */
  offer(frame: T): void {
    if (this.#closed) return;
    if (this.#waiting.length > 0 || this.#spent >= this.#bytesPerTurn) {
      // The socket is held from the first frame that waits until none does.
      if (this.#waiting.push(frame) === 1) this.#reading.hold();
      this.#scheduleTurn();
      return;
    }
    this.#take(frame);
  }

  /** The connection is gone: what waits is dropped, and nothing more is read. */
  close(): void {
    this.#closed = true;
    this.#waiting.length = 0;
    this.#turn?.cancel();
    this.#turn = undefined;
  }

  #take(frame: T): void {
    this.#spent += frame.length;
    this.#scheduleTurn();
    this.#read(frame);
  }

  #scheduleTurn(): void {
    this.#turn ??= this.#nextTurn(() => this.#newTurn());
  }

  #newTurn(): void {
    this.#turn = undefined;
    this.#spent = 0;
    const held = this.#waiting.length > 0;
    while (!this.#closed && this.#waiting.length > 0 && this.#spent < this.#bytesPerTurn) this.#take(this.#waiting.shift()!);
    if (held && !this.#closed && this.#waiting.length === 0) this.#reading.release();
  }
}
