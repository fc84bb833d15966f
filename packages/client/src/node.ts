// @keel/client/node — Node-only parts: the SQLite store and a client wired to `ws`.
import { WireLimits } from '@keel/engine';
import { WebSocket } from 'ws';
import { type KeelClient, type KeelClientOptions, createClient } from './client.js';
import type { ClientStore } from './storage/client-store.js';
import { sqliteFiles } from './storage/sqlite-local-data.js';
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

export type NodeClientOptions = Omit<KeelClientOptions, 'WebSocket' | 'storage' | 'localData'> &
  (
    | { readonly storage: ClientStore }
    /** A SQLite file the client opens and owns: closed with the client, deleted by `signOut({ wipe: true })`. */
    | { readonly sqlitePath: string }
  );

/**
 * A client using the `ws` package for its WebSocket, without compression and with frame limits.
 * Storage: a store the app opened and keeps (`storage`; a wipe empties it), or a SQLite file
 * the client opens itself (`sqlitePath`).
 */
export const createNodeClient = async (options: NodeClientOptions): Promise<KeelClient> => {
  if (!('sqlitePath' in options)) return createClient({ ...options, WebSocket: RelayWebSocket });
  const { sqlitePath, ...rest } = options;
  const storage = openSqliteClientStore(sqlitePath);
  let client: KeelClient;
  try {
    client = await createClient({ ...rest, storage, localData: sqliteFiles(storage, sqlitePath), WebSocket: RelayWebSocket });
  } catch (error) {
    await storage.close();
    throw error;
  }
  // 'closed' is emitted once every document's writes have settled.
  client.on('status', (status) => {
    if (status === 'closed') void storage.close();
  });
  return client;
};
