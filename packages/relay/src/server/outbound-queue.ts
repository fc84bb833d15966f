/** The part of a WebSocket the queue needs; `ws`'s WebSocket satisfies it. */
export interface OutboundSocket {
  send(data: string, cb: (error?: Error) => void): void;
}

const LANES = 10;

/** What the queue does when a peer stops reading. */
export interface OutboundLimits {
  /**
   * Characters queued here (not yet handed to the socket) past which the peer counts as not
   * reading: `onOverflow` is called once and nothing more is queued. The connection is then
   * dropped; the device catches up from the log when it comes back, so nothing is lost.
   */
  readonly maxQueuedChars: number;
  /** Paced producers (catch-up) add more only while fewer characters than this are queued. */
  readonly lowWaterChars: number;
  readonly onOverflow: () => void;
  /** The queue fell below the low-water mark after a producer found it full. */
  readonly onRoom: () => void;
}

/**
 * Per-connection send queue ordered by priority lane. At most `highWaterBytes` are handed to
 * the socket at once; everything else waits here, where a crisis frame (lane 10) overtakes
 * any queued bulk frame. Without this, a crisis update would sit behind megabytes of catch-up
 * in the kernel's socket buffer.
 */
export class OutboundQueue {
  readonly #socket: OutboundSocket;
  readonly #highWaterBytes: number;
  readonly #lanes: string[][] = Array.from({ length: LANES + 1 }, () => []);
  readonly #heads: number[] = Array.from({ length: LANES + 1 }, () => 0);
  readonly #limits: OutboundLimits | undefined;
  #queued = 0;
  #queuedChars = 0;
  /** Characters waiting per lane (index = lane), for the queue-depth gauges read on a metrics scrape. */
  readonly #laneChars: number[] = Array.from({ length: LANES + 1 }, () => 0);
  #inflightBytes = 0;
  #closed = false;
  #overflowed = false;
  #waitingForRoom = false;

  constructor(socket: OutboundSocket, highWaterBytes = 256 * 1024, limits?: OutboundLimits) {
    this.#socket = socket;
    this.#highWaterBytes = highWaterBytes;
    this.#limits = limits;
  }

  /** Frames waiting in the queue (not yet handed to the socket). */
  get queued(): number {
    return this.#queued;
  }

  /** Characters waiting in the queue (not yet handed to the socket). */
  get queuedChars(): number {
    return this.#queuedChars;
  }

  /** Adds the characters waiting in each lane to `into` (index = lane). */
  addQueuedCharsByLane(into: number[]): void {
    for (let l = 1; l <= LANES; l++) into[l] = (into[l] ?? 0) + this.#laneChars[l]!;
  }

  /**
   * Whether a paced producer may add more now. If not, `onRoom` is called once the queue has
   * drained below the low-water mark.
   */
  hasRoom(): boolean {
    if (this.#closed) return false;
    if (!this.#limits || this.#queuedChars < this.#limits.lowWaterChars) return true;
    this.#waitingForRoom = true;
    return false;
  }

  /** Queues a frame; false if the queue is closed or the peer stopped reading (see `OutboundLimits`). */
  enqueue(lane: number, frame: string): boolean {
    if (this.#closed) return false;
    if (this.#limits && this.#queuedChars + frame.length > this.#limits.maxQueuedChars && this.#queued > 0) {
      if (!this.#overflowed) {
        this.#overflowed = true;
        this.#limits.onOverflow();
      }
      return false;
    }
    const l = Math.min(LANES, Math.max(1, Math.trunc(lane)));
    this.#lanes[l]!.push(frame);
    this.#laneChars[l]! += frame.length;
    this.#queued++;
    this.#queuedChars += frame.length;
    this.#pump();
    return true;
  }

  /**
   * Queues an ephemeral frame (awareness) only while fewer than `maxQueuedChars` characters
   * wait, counting it: a backed-up peer loses it instead of the queue growing, and it never
   * counts as the peer not reading. False when it was dropped.
   */
  offer(lane: number, frame: string, maxQueuedChars: number): boolean {
    if (this.#closed || this.#queuedChars + frame.length > maxQueuedChars) return false;
    return this.enqueue(lane, frame);
  }

  /** Drops whatever is still queued; the socket is going away. */
  close(): void {
    this.#closed = true;
    for (let l = 1; l <= LANES; l++) {
      this.#lanes[l] = [];
      this.#heads[l] = 0;
      this.#laneChars[l] = 0;
    }
    this.#queued = 0;
    this.#queuedChars = 0;
  }

  #next(): string | undefined {
    for (let l = LANES; l >= 1; l--) {
      const lane = this.#lanes[l]!;
      const head = this.#heads[l]!;
      if (head < lane.length) {
        const frame = lane[head]!;
        this.#laneChars[l]! -= frame.length;
        // Compact occasionally so a long-lived queue does not keep sent frames alive.
        if (head + 1 === lane.length) {
          this.#lanes[l] = [];
          this.#heads[l] = 0;
        } else if (head > 1024) {
          this.#lanes[l] = lane.slice(head + 1);
          this.#heads[l] = 0;
        } else {
          this.#heads[l] = head + 1;
        }
        return frame;
      }
    }
    return undefined;
  }

  #pump(): void {
    while (!this.#closed && this.#inflightBytes < this.#highWaterBytes) {
      const frame = this.#next();
      if (frame === undefined) break;
      this.#queued--;
      const bytes = frame.length;
      this.#queuedChars -= bytes;
      this.#inflightBytes += bytes;
      this.#socket.send(frame, () => {
        this.#inflightBytes -= bytes;
        this.#pump();
      });
    }
    if (this.#waitingForRoom && this.#limits && this.#queuedChars < this.#limits.lowWaterChars && !this.#closed) {
      this.#waitingForRoom = false;
      this.#limits.onRoom();
    }
  }
}
