/** A key is a path of segments, e.g. ['outbox', docId, '00000000000000000042']. */
export type StorageKey = readonly string[];

export interface StorageChunk {
  readonly key: StorageKey;
  readonly data: Uint8Array;
}

export type StorageOp =
  | { readonly op: 'save'; readonly key: StorageKey; readonly data: Uint8Array }
  | { readonly op: 'remove'; readonly key: StorageKey };

/**
 * A device's local store, shaped like automerge-repo's StorageAdapterInterface with an atomic
 * batch added: Keel's outbox and counters must change together or not at all. Implementations:
 * memory, SQLite (Node), IndexedDB (browser, step 4). All run the same conformance suite.
 */
export interface ClientStore {
  load(key: StorageKey): Promise<Uint8Array | undefined>;
  save(key: StorageKey, data: Uint8Array): Promise<void>;
  remove(key: StorageKey): Promise<void>;
  /** Every entry strictly below `prefix` (not the prefix's own key), in key order. */
  loadRange(prefix: StorageKey): Promise<StorageChunk[]>;
  /** Removes every entry strictly below `prefix`. */
  removeRange(prefix: StorageKey): Promise<void>;
  /** Applies all operations atomically and durably, in order. */
  batch(ops: readonly StorageOp[]): Promise<void>;
  close(): Promise<void>;
}

/** Zero-padded decimal so that key order is numeric order. */
export const orderKey = (n: number): string => String(n).padStart(16, '0');

/** Keys are joined with a separator no segment may contain. */
export const KEY_SEPARATOR = '\u001f';

export const joinKey = (key: StorageKey): string => {
  for (const segment of key) {
    if (segment.includes(KEY_SEPARATOR)) throw new Error('storage key segments must not contain U+001F');
  }
  return key.join(KEY_SEPARATOR);
};

export const splitKey = (joined: string): StorageKey => joined.split(KEY_SEPARATOR);

/** Joined form of a prefix: every key below the prefix starts with it. */
export const joinPrefix = (prefix: StorageKey): string => (prefix.length === 0 ? '' : joinKey(prefix) + KEY_SEPARATOR);

/**
 * Smallest joined key after every key below a non-empty joined prefix (exclusive upper bound of
 * its range). The empty prefix has no such bound; callers take "everything" instead.
 */
export const prefixEnd = (joinedPrefix: string): string => {
  if (joinedPrefix === '') throw new RangeError('the empty prefix has no upper bound');
  return joinedPrefix.slice(0, -1) + String.fromCharCode(KEY_SEPARATOR.charCodeAt(0) + 1);
};
