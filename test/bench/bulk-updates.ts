import { randomBytes } from 'node:crypto';
import * as Y from 'yjs';

/** Bytes a map-set update adds around its string value (struct header, key, delete set); measured. */
const UPDATE_OVERHEAD_BYTES = 30;

/**
 * `count` real Yjs updates of one document, each about `bytes` long: one client overwriting a few
 * keys of a map with incompressible text, as a check-in form being filled in. Applied in order they
 * form a valid history; the overwritten values are garbage-collected, so a replica stays small.
 */
export const createBulkUpdates = (count: number, bytes: number): Uint8Array[] => {
  const doc = new Y.Doc();
  const updates: Uint8Array[] = [];
  doc.on('update', (update: Uint8Array) => updates.push(update));
  const map = doc.getMap('m');
  // base64 of random bytes: text that compression cannot shrink, like the ciphertext Keel sends.
  const textBytes = Math.max(4, bytes - UPDATE_OVERHEAD_BYTES);
  const pool = randomBytes(Math.ceil((textBytes * 3) / 4) + 64).toString('base64');
  for (let i = 0; i < count; i++) {
    const start = i % 64;
    map.set(`k${i % 8}`, pool.slice(start, start + textBytes));
  }
  doc.destroy();
  return updates;
};

export const meanLength = (items: readonly { length: number }[]): number =>
  items.length === 0 ? 0 : items.reduce((sum, item) => sum + item.length, 0) / items.length;
