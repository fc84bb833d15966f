import * as buffer from 'lib0/buffer';
import * as encoding from 'lib0/encoding';

/** Unpadded base64url, the only byte encoding on Keel's wire. */
export const toB64 = (bytes: Uint8Array): string => buffer.toBase64UrlEncoded(bytes);

/** Decodes unpadded base64url. Callers validate the alphabet first (see `b64Schema`). */
export const fromB64 = (text: string): Uint8Array => buffer.fromBase64UrlEncoded(text);

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
