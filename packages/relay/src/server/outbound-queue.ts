/** The part of a WebSocket the queue needs; `ws`'s WebSocket satisfies it. */
export interface OutboundSocket {
  send(data: string, cb: (error?: Error) => void): void;
}

const LANES = 10;

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
  #queued = 0;
  #inflightBytes = 0;
  #closed = false;

  constructor(socket: OutboundSocket, highWaterBytes = 256 * 1024) {
    this.#socket = socket;
    this.#highWaterBytes = highWaterBytes;
  }

  /** Frames waiting in the queue (not yet handed to the socket). */
  get queued(): number {
    return this.#queued;
  }

  enqueue(lane: number, frame: string): void {
    if (this.#closed) return;
    const l = Math.min(LANES, Math.max(1, Math.trunc(lane)));
    this.#lanes[l]!.push(frame);
    this.#queued++;
    this.#pump();
  }

  /** Drops whatever is still queued; the socket is going away. */
  close(): void {
    this.#closed = true;
    for (let l = 1; l <= LANES; l++) {
      this.#lanes[l] = [];
      this.#heads[l] = 0;
    }
    this.#queued = 0;
  }

  #next(): string | undefined {
    for (let l = LANES; l >= 1; l--) {
      const lane = this.#lanes[l]!;
      const head = this.#heads[l]!;
      if (head < lane.length) {
        const frame = lane[head]!;
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
      if (frame === undefined) return;
      this.#queued--;
      const bytes = frame.length;
      this.#inflightBytes += bytes;
      this.#socket.send(frame, () => {
        this.#inflightBytes -= bytes;
        this.#pump();
      });
    }
  }
}
