import type { WebSocket } from 'ws';

/** The part of ws's (internal) receiver that holds its frame limit. */
interface ReceiverWithLimit {
  _maxPayload: number;
}

/**
 * Sets the largest frame this socket accepts from now on. ws checks the limit when it reads a
 * frame's header (and the running total of a fragmented message), so a frame over it is refused
 * with 1009 before its payload is buffered — which is the point: before authentication a peer
 * may make the relay hold a few KiB, not the 32 MiB an authenticated device may send.
 *
 * ws has no public per-socket limit (maxPayload is per server), so this sets the receiver's
 * field; ws is pinned exactly (8.23.0) and test/e2e/attacks-preauth.test.ts fails if the field
 * stops working.
 */
export const setFrameLimit = (ws: WebSocket, bytes: number): void => {
  const receiver = (ws as unknown as { _receiver?: ReceiverWithLimit })._receiver;
  if (!receiver || typeof receiver._maxPayload !== 'number') throw new Error('ws receiver has no _maxPayload: the pinned ws version changed');
  receiver._maxPayload = bytes;
};
