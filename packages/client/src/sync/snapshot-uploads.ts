import type { DocId, Envelope, KeelError } from '@keel/engine';
import type { DocSync } from './doc-sync.js';

export interface SnapshotUploadsDeps {
  /** Upload once this many log entries arrived since the last snapshot; 0 turns automatic uploads off. */
  readonly every: number;
  /** Whether the link is authenticated now. */
  readonly online: () => boolean;
  /** Whether this DocSync is still the open one for its document (a document closed meanwhile is snapshotted once open again). */
  readonly isOpen: (sync: DocSync) => boolean;
  /** Sends a snapshot envelope (in a push frame). */
  readonly push: (env: Envelope) => void;
  readonly onError: (error: KeelError & { readonly doc: DocId }) => void;
}

/**
 * Encrypted snapshots a device uploads so the relay can prune a document's log and new devices
 * start fast: automatically after `every` entries arrived, or when the app asks. One upload per
 * document at a time; a refused one costs nothing (the next covers more).
 */
export class SnapshotUploads {
  readonly #deps: SnapshotUploadsDeps;
  readonly #running = new Set<DocId>();

  constructor(deps: SnapshotUploadsDeps) {
    this.#deps = deps;
  }

  /** Uploads a snapshot now; resolves to the seq it covers, or undefined with nothing new to cover or no connection. */
  async now(sync: DocSync | undefined): Promise<number | undefined> {
    if (!sync || !this.#deps.online()) return undefined;
    const env = await sync.snapshot(sync.baseLane);
    if (!env) return undefined;
    this.#deps.push(env);
    return env.base;
  }

  /** After entries arrived: uploads one when enough came since the last snapshot. */
  maybe(sync: DocSync): void {
    const { every } = this.#deps;
    if (every <= 0 || sync.sinceSnapshot < every || !this.#deps.isOpen(sync)) return;
    if (this.#running.has(sync.docId) || !this.#deps.online()) return;
    this.#running.add(sync.docId);
    sync
      .snapshot(sync.baseLane)
      .then((env) => {
        if (env) this.#deps.push(env);
      })
      .catch((error: unknown) => {
        this.#deps.onError({ code: 'INTERNAL', message: `snapshot failed: ${error instanceof Error ? error.message : String(error)}`, doc: sync.docId });
      })
      .finally(() => this.#running.delete(sync.docId));
  }
}
