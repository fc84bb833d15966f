import { Inflate, deflateSync } from 'fflate';
import { encodeFields, fromB64, toB64 } from '../protocol/bytes.js';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import { type Envelope, type EnvelopeKind, WireLimits } from '../protocol/frames.js';
import type { DeviceId, DocId, Lane, Seq } from '../protocol/ids.js';
import { Domain } from './domains.js';
import { getSodium } from './sodium.js';
import { verifyDetached } from './signature.js';

/** What an envelope says in clear. The relay may read it; the signature stops it changing it. */
export interface EnvelopeHeader {
  readonly doc: DocId;
  readonly kind: EnvelopeKind;
  readonly epoch: number;
  readonly device: DeviceId;
  readonly counter: number;
  readonly lane: Lane;
  /** Snapshots only: the seq they cover. */
  readonly base?: number | undefined;
  /** Part `index` of an update split into `count` envelopes; bound like every other field. */
  readonly part?: { readonly index: number; readonly count: number } | undefined;
}

/** First plaintext byte: how the rest is encoded. */
const PayloadFlag = { padded: 0x01, deflated: 0x02 } as const;
const KNOWN_FLAGS = PayloadFlag.padded | PayloadFlag.deflated;
/** Payloads below this are never worth deflating. */
const DEFLATE_FROM_BYTES = 512;
/**
 * By default a deflated payload may not inflate past this (a decompression bomb from a broken or
 * stolen author device): an honest part's plaintext is at most what one frame a device accepts
 * can carry, so nothing honest inflates past it.
 */
const MAX_INFLATED_BYTES = WireLimits.maxInboundFrameBytes;

/** Inflates, giving up once the output passes `max` bytes (then it stops: the work is bounded by `max` too). */
const inflateBounded = (data: Uint8Array, max: number): Uint8Array | 'too-large' | 'malformed' => {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const tooBig = new Error('inflated payload too large');
  try {
    const inflater = new Inflate((chunk) => {
      size += chunk.length;
      if (size > max) throw tooBig;
      chunks.push(chunk);
    });
    inflater.push(data, true);
  } catch (error) {
    return error === tooBig ? 'too-large' : 'malformed';
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
};
const MIN_PAD_BUCKET = 256;

/**
 * Header fields in their bound order; a snapshot's base and a part's index and count are bound
 * too (a snapshot has no parts, so the field counts never collide: 6, 7 or 8).
 */
const headerFields = (h: EnvelopeHeader) => {
  const fields = [h.doc, h.kind, h.epoch, h.device, h.counter, h.lane];
  if (h.base !== undefined) return [...fields, h.base];
  if (h.part !== undefined) return [...fields, h.part.index, h.part.count];
  return fields;
};

const associatedData = (h: EnvelopeHeader): Uint8Array => encodeFields([Domain.envelopeAead, ...headerFields(h)]);

const signedBytes = (h: EnvelopeHeader, nonce: Uint8Array, ct: Uint8Array): Uint8Array =>
  encodeFields([Domain.envelopeSignature, ...headerFields(h), nonce, ct]);

/**
 * The exact bytes an envelope's author signed (Ed25519, domain-separated), for a verifier
 * other than libsodium's — the relay checks with Node's native Ed25519, which hashes large
 * envelopes several times faster than WebAssembly.
 */
export const envelopeSignedBytes = (env: Envelope): Uint8Array => signedBytes(env, fromB64(env.nonce), fromB64(env.ct));

/** Smallest power of two ≥ 256 that holds `n` bytes; hides sizes within a factor of two. */
export const padBucket = (n: number): number => {
  let bucket = MIN_PAD_BUCKET;
  while (bucket < n) bucket *= 2;
  return bucket;
};

/**
 * The largest payload whose padded body is at most `maxBodyBytes` (e.g. maxPartPayloadBytes of a
 * frame limit): sealing adds a flag byte and the pad marker, then rounds up to a power of two.
 */
export const maxPaddedPayloadBytes = (maxBodyBytes: number): number => {
  let bucket = MIN_PAD_BUCKET;
  while (bucket * 2 <= maxBodyBytes) bucket *= 2;
  return bucket - 2;
};

export interface SealOptions {
  /** Document key for the header's epoch. */
  readonly key: Uint8Array;
  /** The author device's Ed25519 secret key. */
  readonly signingKey: Uint8Array;
  /** Pad the payload to a power-of-two bucket so the relay learns less from sizes. */
  readonly pad?: boolean;
  /**
   * Deflate the payload first when that makes it smaller. Off unless the app asks: with padding
   * the relay still learns the size bucket, and a deflated size says how repetitive the text is.
   */
  readonly compress?: boolean;
}

/** Encrypts and signs one Yjs update or snapshot. A fresh random 24-byte nonce every call. */
export const sealEnvelope = (header: EnvelopeHeader, payload: Uint8Array, options: SealOptions): Envelope => {
  const s = getSodium();
  let flags = options.pad ? PayloadFlag.padded : 0;
  let content = payload;
  if (options.compress && payload.length >= DEFLATE_FROM_BYTES) {
    const deflated = deflateSync(payload, { level: 6 });
    if (deflated.length < payload.length) {
      content = deflated;
      flags |= PayloadFlag.deflated;
    }
  }
  let body: Uint8Array = new Uint8Array(content.length + 1);
  body[0] = flags;
  body.set(content, 1);
  if (options.pad) body = s.pad(body, padBucket(body.length + 1));
  const nonce = s.randombytes_buf(s.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
  const ct = s.crypto_aead_xchacha20poly1305_ietf_encrypt(body, associatedData(header), null, nonce, options.key);
  const sig = s.crypto_sign_detached(signedBytes(header, nonce, ct), options.signingKey);
  const { base, part, ...rest } = header;
  return {
    ...rest,
    ...(base === undefined ? {} : { base: base as Seq }),
    ...(part === undefined ? {} : { part: { index: part.index, count: part.count } }),
    nonce: toB64(nonce),
    ct: toB64(ct),
    sig: toB64(sig),
  };
};

/** True when `publicKey` signed this envelope exactly as it is. What the relay checks. */
export const verifyEnvelopeSignature = (env: Envelope, publicKey: Uint8Array): boolean =>
  verifyDetached(env.sig, () => signedBytes(env, fromB64(env.nonce), fromB64(env.ct)), publicKey);

export interface OpenOptions {
  /**
   * The most bytes a deflated payload may inflate to (default maxInboundFrameBytes); past it the
   * envelope is refused with LIMIT_EXCEEDED and inflation stops there.
   */
  readonly maxInflatedBytes?: number;
}

/**
 * Decrypts an envelope whose signature the caller has already verified; returns the payload.
 * Any change to header, nonce or ciphertext fails authentication here.
 */
export const decryptEnvelope = (env: Envelope, key: Uint8Array, options: OpenOptions = {}): Result<Uint8Array> => {
  const s = getSodium();
  let body: Uint8Array;
  try {
    body = s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, fromB64(env.ct), associatedData(env), fromB64(env.nonce), key);
  } catch {
    return err(ErrorCode.DECRYPT_FAILED, `envelope ${env.device}#${env.counter} does not decrypt under this document's key`);
  }
  const flags = body[0];
  if (flags === undefined || (flags & ~KNOWN_FLAGS) !== 0) return err(ErrorCode.BAD_PAYLOAD, 'unknown payload encoding');
  if (flags & PayloadFlag.padded) {
    try {
      body = s.unpad(body, body.length);
    } catch {
      return err(ErrorCode.BAD_PAYLOAD, 'payload padding is malformed');
    }
  }
  if (flags & PayloadFlag.deflated) {
    const max = options.maxInflatedBytes ?? MAX_INFLATED_BYTES;
    const inflated = inflateBounded(body.subarray(1), max);
    if (inflated === 'too-large') return err(ErrorCode.LIMIT_EXCEEDED, `envelope ${env.device}#${env.counter} inflates past ${max} bytes`);
    if (inflated === 'malformed') return err(ErrorCode.BAD_PAYLOAD, 'deflated payload is malformed');
    return ok(inflated);
  }
  return ok(body.subarray(1));
};

/** Verifies the author's signature, then decrypts with the document key; returns the payload. */
export const openEnvelope = (env: Envelope, options: OpenOptions & { key: Uint8Array; authorPublicKey: Uint8Array }): Result<Uint8Array> => {
  if (!verifyEnvelopeSignature(env, options.authorPublicKey)) {
    return err(ErrorCode.BAD_SIGNATURE, `envelope ${env.device}#${env.counter} is not signed by its author`);
  }
  return decryptEnvelope(env, options.key, options);
};
