import type { AppendOutcome, AppendRequest, RelayStore } from '../storage/relay-store.js';

interface Pending {
  readonly batch: readonly AppendRequest[];
  readonly resolve: (outcomes: AppendOutcome[]) => void;
  readonly reject: (error: unknown) => void;
}

export interface CommitQueue {
  /**
   * Resolves once every request of `batch` has a durable outcome. An urgent batch (a crisis
   * lane) is committed at once, together with whatever waits before it, instead of at the end
   * of the event-loop turn.
   */
  submit(batch: readonly AppendRequest[], urgent?: boolean): Promise<AppendOutcome[]>;
  /** Resolves when nothing is waiting or being committed. */
  idle(): Promise<void>;
}

/**
 * Group commit: pushes arriving in the same turn of the event loop share one transaction,
 * so one fsync acknowledges many updates. Order of submission is kept, which keeps every
 * author's counters in order.
 */
export const createCommitQueue = (store: RelayStore, now: () => number, maxBatch = 1024): CommitQueue => {
  const waiting: Pending[] = [];
  let running: Promise<void> | undefined;
  let urgentWaiting = false;
  /** Starts a flush that is still waiting for the end of the turn. */
  let wake: (() => void) | undefined;

  const flush = async (): Promise<void> => {
    while (waiting.length > 0) {
      const take: Pending[] = [];
      let size = 0;
      while (waiting.length > 0 && (take.length === 0 || size + waiting[0]!.batch.length <= maxBatch)) {
        const next = waiting.shift()!;
        take.push(next);
        size += next.batch.length;
      }
      try {
        const outcomes = await store.append(
          take.flatMap((p) => p.batch),
          now(),
        );
        let offset = 0;
        for (const p of take) {
          p.resolve(outcomes.slice(offset, offset + p.batch.length));
          offset += p.batch.length;
        }
      } catch (error) {
        for (const p of take) p.reject(error);
      }
    }
  };

  const schedule = (): void => {
    if (running) return;
    const urgent = urgentWaiting;
    urgentWaiting = false;
    // Bulk waits for the end of the turn to share a transaction; urgent work goes now.
    running = new Promise<void>((resolve) => {
      wake = resolve;
      if (urgent) resolve();
      else setImmediate(resolve);
    })
      .then(() => {
        wake = undefined;
        return flush();
      })
      .finally(() => {
        running = undefined;
        if (waiting.length > 0) schedule();
      });
  };

  return {
    submit(batch, urgent = false) {
      return new Promise<AppendOutcome[]>((resolve, reject) => {
        waiting.push({ batch, resolve, reject });
        if (urgent) {
          urgentWaiting = true;
          wake?.();
        }
        schedule();
      });
    },
    async idle() {
      while (running) await running;
    },
  };
};
