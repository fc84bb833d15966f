import * as z from 'zod';

/** Pseudonymous user id: `u_` + base64url(BLAKE2b-256(user public key)). Self-certifying. */
export const UserIdSchema = z.string().regex(/^u_[A-Za-z0-9_-]{43}$/, 'not a Keel user id').brand<'UserId'>();
export type UserId = z.infer<typeof UserIdSchema>;

/** Device id: `d_` + base64url(BLAKE2b-128(device Ed25519 public key)). */
export const DeviceIdSchema = z.string().regex(/^d_[A-Za-z0-9_-]{22}$/, 'not a Keel device id').brand<'DeviceId'>();
export type DeviceId = z.infer<typeof DeviceIdSchema>;

/** Opaque document id: `doc_` + base64url(keyed BLAKE2b-256(class, name)); reveals neither. */
export const DocIdSchema = z.string().regex(/^doc_[A-Za-z0-9_-]{43}$/, 'not a Keel document id').brand<'DocId'>();
export type DocId = z.infer<typeof DocIdSchema>;

/**
 * A relay deployment's id, bound into every auth challenge and pinned by devices on first
 * contact, so an answer to one deployment's challenge is refused by (and never given to) another.
 */
export const RelayIdSchema = z
  .string()
  .min(1, 'relay id must not be empty')
  .max(128, 'relay id must be at most 128 characters')
  .regex(/^[\x21-\x7e]+$/, 'relay id must be printable ASCII without spaces')
  .brand<'RelayId'>();
export type RelayId = z.infer<typeof RelayIdSchema>;

/** Position in a document's relay log; 1 is the first update, 0 means "nothing yet". */
export const SeqSchema = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).brand<'Seq'>();
export type Seq = z.infer<typeof SeqSchema>;

/** A device's own counter for one document: 1, 2, 3… with no gaps. */
export const CounterSchema = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);

/** Key epoch of a document; 0 is derived from the root key, later ones follow revocations. */
export const EpochSchema = z.number().int().min(0).max(0x7fff_ffff);

/** Priority lane 1–10, visible to the relay so it can order and limit traffic. */
export const LaneSchema = z.number().int().min(1).max(10);
export type Lane = z.infer<typeof LaneSchema>;

export const asUserId = (s: string): UserId => UserIdSchema.parse(s);
export const asDeviceId = (s: string): DeviceId => DeviceIdSchema.parse(s);
export const asDocId = (s: string): DocId => DocIdSchema.parse(s);
export const asSeq = (n: number): Seq => n as Seq;
