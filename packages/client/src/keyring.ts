import { type DocId, deriveDocKey, deriveEpochZeroSecret, fromB64, toB64 } from '@keel/engine';
import type { DocKeys } from './sync/doc-sync.js';

/**
 * The key epochs this device holds. Epoch 0 derives from the root key; every later epoch is a
 * random secret another device sealed to this one after a revocation. New writes use the
 * newest epoch; older epochs stay to read what was written under them.
 */
export class KeyRing {
  readonly #secrets = new Map<number, Uint8Array>();
  readonly #docKeys = new Map<string, Uint8Array>();

  constructor(rootKey: Uint8Array, epochs: Readonly<Record<string, string>> = {}) {
    this.#secrets.set(0, deriveEpochZeroSecret(rootKey));
    for (const [epoch, secret] of Object.entries(epochs)) this.#secrets.set(Number(epoch), fromB64(secret));
  }

  /** Newest epoch held. */
  get current(): number {
    return Math.max(...this.#secrets.keys());
  }

  has(epoch: number): boolean {
    return this.#secrets.has(epoch);
  }

  /** Adds an epoch's secret; true if it is new. */
  add(epoch: number, secret: Uint8Array): boolean {
    if (this.#secrets.has(epoch)) return false;
    this.#secrets.set(epoch, secret);
    return true;
  }

  /** Epoch secrets after the first, for storage and for a device grant (base64url). */
  export(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [epoch, secret] of this.#secrets) if (epoch > 0) out[String(epoch)] = toB64(secret);
    return out;
  }

  /** One document's key view: derived per (document, epoch) on first use and cached. */
  forDoc(docId: DocId): DocKeys {
    const get = (epoch: number): Uint8Array | undefined => {
      const secret = this.#secrets.get(epoch);
      if (!secret) return undefined;
      const cacheKey = `${epoch} ${docId}`;
      let key = this.#docKeys.get(cacheKey);
      if (!key) {
        key = deriveDocKey(secret, docId, epoch);
        this.#docKeys.set(cacheKey, key);
      }
      return key;
    };
    return {
      current: () => {
        const epoch = this.current;
        return { epoch, key: get(epoch)! };
      },
      get,
    };
  }
}
