import { type DocId, deriveDocKey, deriveEpochZeroSecret, fromB64, toB64 } from '@keel/engine';
import * as z from 'zod';
import type { DocKeys } from './sync/doc-sync.js';
import { type EpochMeta, EpochMetaSchema } from './trust-book.js';

const EpochNumberSchema = z.string().regex(/^[1-9][0-9]*$/);
const SecretSchema = z.string().regex(/^[A-Za-z0-9_-]{43}$/);

/** The stored form (ClientStore key ['client','epochs']): each secret with who held it, when a record said. */
const StoredEpochsV2Schema = z.strictObject({
  v: z.literal(2),
  epochs: z.record(EpochNumberSchema, z.strictObject({ secret: SecretSchema, meta: EpochMetaSchema.optional() })),
});
/** Before step 6: secrets only. Their holders are unknown until a record arrives (so: every device). */
const StoredEpochsV1Schema = z.record(EpochNumberSchema, SecretSchema);

export type StoredEpochs = z.infer<typeof StoredEpochsV2Schema>;
export type HeldEpochs = StoredEpochs['epochs'];

/** Reads either stored form (the older one is migrated: no secret is lost, holders become unknown). */
export const parseStoredEpochs = (json: unknown): HeldEpochs => {
  const v2 = StoredEpochsV2Schema.safeParse(json);
  if (v2.success) return v2.data.epochs;
  const v1 = StoredEpochsV1Schema.parse(json);
  return Object.fromEntries(Object.entries(v1).map(([epoch, secret]) => [epoch, { secret }]));
};

/**
 * The key epochs this device holds. Epoch 0 derives from the root key; every later epoch is a
 * random secret a device sealed to this one. Any held epoch opens what was written under it;
 * new writes use only the epoch the client chose (the newest clean one, see trust-book.ts),
 * and none while there is none.
 */
export class KeyRing {
  readonly #secrets = new Map<number, Uint8Array>();
  readonly #meta = new Map<number, EpochMeta>();
  readonly #docKeys = new Map<string, Uint8Array>();
  #write: number | undefined;

  constructor(rootKey: Uint8Array, epochs: HeldEpochs = {}) {
    this.#secrets.set(0, deriveEpochZeroSecret(rootKey));
    for (const [epoch, held] of Object.entries(epochs)) {
      this.#secrets.set(Number(epoch), fromB64(held.secret));
      if (held.meta) this.#meta.set(Number(epoch), held.meta);
    }
  }

  /** Newest epoch held (clean or not). */
  get newest(): number {
    return Math.max(...this.#secrets.keys());
  }

  /** The epoch new writes are sealed under; undefined while no held epoch is clean. */
  get writeEpoch(): number | undefined {
    return this.#write;
  }

  useForWriting(epoch: number | undefined): void {
    if (epoch !== undefined && !this.#secrets.has(epoch)) throw new Error(`no secret for epoch ${epoch}`);
    this.#write = epoch;
  }

  has(epoch: number): boolean {
    return this.#secrets.has(epoch);
  }

  /** Every held epoch with what is known of its holders. */
  held(): [number, EpochMeta | undefined][] {
    return [...this.#secrets.keys()].map((epoch) => [epoch, this.#meta.get(epoch)]);
  }

  /** Adds an epoch's secret; true if it is new. */
  add(epoch: number, secret: Uint8Array, meta?: EpochMeta): boolean {
    if (meta) this.#meta.set(epoch, meta);
    if (this.#secrets.has(epoch)) return false;
    this.#secrets.set(epoch, secret);
    return true;
  }

  /**
   * Records who holds a held epoch, from a verified record whose secret is the one held (a
   * hostile relay may show two records with one number); true if that is news.
   */
  describe(epoch: number, secret: Uint8Array, meta: EpochMeta): boolean {
    const held = this.#secrets.get(epoch);
    if (!held || epoch === 0 || this.#meta.has(epoch) || toB64(held) !== toB64(secret)) return false;
    this.#meta.set(epoch, meta);
    return true;
  }

  /** Epoch secrets after the first, for a device grant (base64url). */
  export(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [epoch, secret] of this.#secrets) if (epoch > 0) out[String(epoch)] = toB64(secret);
    return out;
  }

  /** The stored form: secrets after the first, with their holders. */
  toStored(): StoredEpochs {
    const epochs: HeldEpochs = {};
    for (const [epoch, secret] of this.#secrets) {
      if (epoch === 0) continue;
      const meta = this.#meta.get(epoch);
      epochs[String(epoch)] = { secret: toB64(secret), ...(meta ? { meta } : {}) };
    }
    return { v: 2, epochs };
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
        const epoch = this.#write;
        return epoch === undefined ? undefined : { epoch, key: get(epoch)! };
      },
      get,
    };
  }
}
