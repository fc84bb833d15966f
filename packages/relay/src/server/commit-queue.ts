import type { AppendOutcome, AppendRequest, RelayStore } from '../storage/relay-store.js';

interface Pending {
  readonly batch: readonly AppendRequest[];
  readonly urgent: boolean;
  readonly resolve: (outcomes: AppendOutcome[]) => void;
  readonly reject: (error: unknown) => void;
}

export interface CommitQueue {
  /**
   * Resolves once every request of `batch` has a durable outcome. An urgent batch (a crisis
   * lane) moves ahead of other users' waiting batches (never its own user's: an author's
   * counters must stay in order) and is committed at once instead of at the end of the turn.
   */
  submit(batch: readonly AppendRequest[], urgent?: boolean): Promise<AppendOutcome[]>;
  /** Resolves when nothing is waiting or being committed. */
  idle(): Promise<void>;
}

/** Ciphertext characters one transaction may write: a commit is one synchronous turn of the event loop. */
const MAX_BATCH_CHARS = 4 * 1024 * 1024;

const charsOf = (batch: readonly AppendRequest[]): number => batch.reduce((n, req) => n + req.env.ct.length, 0);

/**
 * Group commit: pushes arriving in the same turn of the event loop share one transaction, so one
 * fsync acknowledges many updates; one transaction writes at most 1,024 envelopes and 4 MiB of
 * ciphertext, and bulk transactions are one per turn. Each user's batches keep their order,
 * which keeps every author's counters in order.
 */
export const createCommitQueue = (
  store: RelayStore,
  now: () => number,
  maxBatch = 1024,
  /** Told after every transaction: its envelopes and how long it took (the relay's `commitBatch` event). */
  onBatch?: (envelopes: number, ms: number) => void,
): CommitQueue => {
  const waiting: Pending[] = [];
  let running: Promise<void> | undefined;
  /** Starts a flush that is still waiting for the end of the turn. */
  let wake: (() => void) | undefined;

  const commitOne = async (): Promise<void> => {
    const take: Pending[] = [];
    let size = 0;
    let chars = 0;
    while (waiting.length > 0 && (take.length === 0 || (size + waiting[0]!.batch.length <= maxBatch && chars + charsOf(waiting[0]!.batch) <= MAX_BATCH_CHARS))) {
      const next = waiting.shift()!;
      take.push(next);
      size += next.batch.length;
      chars += charsOf(next.batch);
    }
    try {
      const startedAt = now();
      const outcomes = await store.append(
        take.flatMap((p) => p.batch),
        startedAt,
      );
      onBatch?.(size, now() - startedAt);
      let offset = 0;
      for (const p of take) {
        p.resolve(outcomes.slice(offset, offset + p.batch.length));
        offset += p.batch.length;
      }
    } catch (error) {
      for (const p of take) p.reject(error);
    }
  };

  /** One transaction, or as many as it takes to commit every urgent batch waiting. */
  const flush = async (): Promise<void> => {
    do await commitOne();
    while (waiting.some((p) => p.urgent));
  };

  const schedule = (): void => {
    if (running) return;
    const urgent = waiting.some((p) => p.urgent);
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
        const pending: Pending = { batch, urgent, resolve, reject };
        if (urgent) {
          // Ahead of other users' waiting batches, behind the last one of its own user.
          const user = batch[0]?.userId;
          let at = 0;
          for (let i = waiting.length - 1; i >= 0; i--) {
            if (waiting[i]!.batch.some((req) => req.userId === user)) {
              at = i + 1;
              break;
            }
          }
          waiting.splice(at, 0, pending);
          wake?.();
        } else {
          waiting.push(pending);
        }
        schedule();
      });
    },
    async idle() {
      while (running) await running;
    },
  };
};
