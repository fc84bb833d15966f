import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';
import * as z from 'zod';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';

/**
 * What a snapshot holds, before sealing: the document's whole state and, per author device,
 * the last counter the state includes — so a device that starts from the snapshot checks the
 * counters of later updates without the log entries the relay pruned.
 */
export interface SnapshotPayload {
  readonly authors: Readonly<Record<string, number>>;
  readonly state: Uint8Array;
}

const AuthorsSchema = z.record(z.string().regex(/^d_[A-Za-z0-9_-]{22}$/), z.number().int().min(0));
const FORMAT = 1;

export const encodeSnapshotPayload = (payload: SnapshotPayload): Uint8Array => {
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, FORMAT);
  encoding.writeVarString(encoder, JSON.stringify(payload.authors));
  encoding.writeVarUint8Array(encoder, payload.state);
  return encoding.toUint8Array(encoder);
};

export const decodeSnapshotPayload = (bytes: Uint8Array): Result<SnapshotPayload> => {
  try {
    const decoder = decoding.createDecoder(bytes);
    if (decoding.readVarUint(decoder) !== FORMAT) return err(ErrorCode.BAD_PAYLOAD, 'unknown snapshot format');
    const authors = AuthorsSchema.safeParse(JSON.parse(decoding.readVarString(decoder)));
    if (!authors.success) return err(ErrorCode.BAD_PAYLOAD, 'snapshot author counters are malformed');
    const state = decoding.readVarUint8Array(decoder);
    return ok({ authors: authors.data, state });
  } catch {
    return err(ErrorCode.BAD_PAYLOAD, 'snapshot payload is malformed');
  }
};
