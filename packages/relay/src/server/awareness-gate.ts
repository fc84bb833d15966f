/**
 * How much awareness (cursors, presence) one connection may send. Awareness is never stored,
 * logged or metered against a tier's document quota, so it needs bounds of its own: otherwise it
 * would be a free, unmetered channel between a user's devices. An honest editor sends a few
 * small frames a second (one per 50–100 ms while typing, a renewal every 15 s); the defaults
 * leave room for bursts and refuse floods.
 */
export interface AwarenessLimits {
  /** Frames per second, sustained. */
  readonly framesPerSecond: number;
  /** Frames a connection may send at once after a quiet spell. */
  readonly frameBurst: number;
  /** Characters (of the frame as received) per second, sustained. */
  readonly charsPerSecond: number;
  /** Characters a connection may send at once. */
  readonly charBurst: number;
  /** Characters queued for a recipient past which an awareness frame is dropped for it, not queued. */
  readonly maxRecipientQueueChars: number;
  /**
   * Frames dropped in a row (or `charBurst` characters of them) past which the peer counts as
   * flooding, not bursting: its socket is then paused for `floodPauseMs`, so the rest waits in
   * its TCP buffers instead of costing the relay the reading (unmasking) of every frame. An
   * honest client never gets there: it sends at most one frame per 80 ms per document.
   */
  readonly floodAfterDrops: number;
  readonly floodPauseMs: number;
}

export const DEFAULT_AWARENESS_LIMITS: AwarenessLimits = {
  framesPerSecond: 30,
  frameBurst: 60,
  charsPerSecond: 128 * 1024,
  charBurst: 256 * 1024,
  maxRecipientQueueChars: 256 * 1024,
  floodAfterDrops: 60,
  floodPauseMs: 1_000,
};

/** Why the relay dropped an awareness frame; counted, never logged one by one. */
export const AWARENESS_DROPS = ['RATE_LIMITED', 'NOT_SUBSCRIBED', 'TIER', 'BACKED_UP'] as const;
export type AwarenessDrop = (typeof AWARENESS_DROPS)[number];

/**
 * Two token buckets (frames and characters) for one connection's awareness. Refills from the
 * clock it is handed; holds two numbers and a time, whatever the peer sends.
 */
export class AwarenessGate {
  readonly #limits: AwarenessLimits;
  readonly #now: () => number;
  #frames: number;
  #chars: number;
  #at: number;
  #dropsInARow = 0;
  #droppedCharsInARow = 0;

  constructor(limits: AwarenessLimits, now: () => number) {
    this.#limits = limits;
    this.#now = now;
    this.#frames = limits.frameBurst;
    this.#chars = limits.charBurst;
    this.#at = now();
  }

  /** Takes one frame of `chars` characters from the budget; false (nothing taken) when over it. */
  admit(chars: number): boolean {
    const now = this.#now();
    const elapsed = Math.max(0, now - this.#at) / 1000;
    this.#at = now;
    const l = this.#limits;
    this.#frames = Math.min(l.frameBurst, this.#frames + elapsed * l.framesPerSecond);
    this.#chars = Math.min(l.charBurst, this.#chars + elapsed * l.charsPerSecond);
    if (this.#frames < 1 || this.#chars < chars) {
      this.#dropsInARow++;
      this.#droppedCharsInARow += chars;
      return false;
    }
    this.#dropsInARow = 0;
    this.#droppedCharsInARow = 0;
    this.#frames -= 1;
    this.#chars -= chars;
    return true;
  }

  /** Whether the peer floods (see floodAfterDrops): true once per run of that many drops (or characters) in a row. */
  flooding(): boolean {
    if (this.#dropsInARow < this.#limits.floodAfterDrops && this.#droppedCharsInARow < this.#limits.charBurst) return false;
    this.#dropsInARow = 0;
    this.#droppedCharsInARow = 0;
    return true;
  }
}
