// @keel/client/node — Node-only parts: the SQLite store and a client wired to `ws`.
import { WireLimits } from '@keel/engine';
import { WebSocket } from 'ws';
import { type KeelClient, type KeelClientOptions, createClient } from './client.js';
import { openSqliteClientStore } from './storage/sqlite-store.js';

export { openSqliteClientStore };

/** The part of ws's (internal) receiver that holds its frame limit. */
interface ReceiverWithLimit {
  _maxPayload: number;
}

/**
 * `ws` as the relay link needs it: no permessage-deflate (a 38 KiB compressed frame could
 * otherwise inflate to the 100 MiB ws allows by default before anything sees it) and a frame
 * limit checked at each frame's header, before its payload is buffered. The limit starts at
 * the hard cap and the link lowers it per stage (1 MiB before `ready`).
 */
export class RelayWebSocket extends WebSocket {
  constructor(url: string) {
    super(url, { perMessageDeflate: false, maxPayload: WireLimits.maxInboundFrameBytes });
  }

  /**
   * ws has no public per-socket limit after construction, so this sets its receiver's field, as
   * the relay does (packages/relay/src/server/frame-limit.ts; ws is pinned exactly). Without a
   * receiver (not open yet) the construction limit stays.
   */
  limitInbound(bytes: number): void {
    const receiver = (this as unknown as { _receiver?: ReceiverWithLimit })._receiver;
    if (receiver && typeof receiver._maxPayload === 'number') receiver._maxPayload = Math.min(bytes, WireLimits.maxInboundFrameBytes);
  }
}

/** A client using the `ws` package for its WebSocket, without compression and with frame limits. */
export const createNodeClient = (options: Omit<KeelClientOptions, 'WebSocket'>): Promise<KeelClient> =>
  createClient({ ...options, WebSocket: RelayWebSocket });
