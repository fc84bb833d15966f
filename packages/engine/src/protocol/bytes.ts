import * as buffer from 'lib0/buffer';
import * as encoding from 'lib0/encoding';

/**
 * Node's Buffer where it exists: its native base64url codec is 5–20× faster than a JS loop on
 * large payloads (a 24 MiB envelope decodes in ~25 ms instead of ~700 ms), and the relay spends
 * most of its per-byte CPU here. Browsers use lib0's codec.
 */
interface NodeBufferLike extends Uint8Array {
  toString(encoding?: 'base64url'): string;
}
const NodeBuffer = (globalThis as { Buffer?: { from(data: ArrayBufferLike | string, a?: number | 'base64url', b?: number): NodeBufferLike } }).Buffer;

/** Unpadded base64url, the only byte encoding on Keel's wire. */
export const toB64 = (bytes: Uint8Array): string =>
  NodeBuffer ? NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url') : buffer.toBase64UrlEncoded(bytes);

/** Decodes unpadded base64url. Callers validate the alphabet first (see `b64Schema`). */
export const fromB64 = (text: string): Uint8Array => {
  if (!NodeBuffer) return buffer.fromBase64UrlEncoded(text);
  const decoded = NodeBuffer.from(text, 'base64url');
  // Small Buffers are views into a shared pool: copy them, so no caller (IndexedDB's structured
  // clone, a `.buffer` read) ever sees bytes that are not its own.
  if (decoded.byteOffset === 0 && decoded.buffer.byteLength === decoded.byteLength) {
    return new Uint8Array(decoded.buffer, 0, decoded.byteLength);
  }
  return new Uint8Array(decoded);
};

/** Characters of unpadded base64url needed for `n` bytes. */
export const b64Length = (n: number): number => Math.ceil((n * 4) / 3);

/** Bytes that `chars` characters of unpadded base64url decode to. */
export const b64ByteLength = (chars: number): number => Math.floor((chars * 3) / 4);

export type Field = string | number | Uint8Array;

/**
 * Canonical, length-prefixed encoding of a tuple of fields. Everything Keel signs or binds
 * as associated data goes through here, so two different tuples never encode alike.
 */
export const encodeFields = (fields: readonly Field[]): Uint8Array => {
  const encoder = encoding.createEncoder();
  for (const field of fields) {
    if (typeof field === 'string') {
      encoding.writeUint8(encoder, 1);
      encoding.writeVarString(encoder, field);
    } else if (typeof field === 'number') {
      if (!Number.isSafeInteger(field) || field < 0) throw new RangeError(`field ${field} is not a non-negative safe integer`);
      encoding.writeUint8(encoder, 2);
      encoding.writeVarUint(encoder, field);
    } else {
      encoding.writeUint8(encoder, 3);
      encoding.writeVarUint8Array(encoder, field);
    }
  }
  return encoding.toUint8Array(encoder);
};

export const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
};
