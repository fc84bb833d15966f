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
  constructor(url: string, tls?: { readonly ca: string | Buffer | (string | Buffer)[] }) {
    super(url, { perMessageDeflate: false, maxPayload: WireLimits.maxInboundFrameBytes, ...(tls ? { ca: tls.ca } : {}) });
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

/**
 * How a Node client checks a `wss://` relay's certificate. Without it, Node's bundled root CAs
 * (and `NODE_EXTRA_CA_CERTS`) decide, as for any HTTPS request.
 */
export interface NodeTlsOptions {
  /**
   * The certificates this client trusts for the relay, PEM: a private CA's, or a self-signed
   * relay certificate itself. They replace the bundled roots for this client's connections only;
   * verification (chain and host name) stays on. Nothing process-wide changes.
   */
  readonly ca: string | Buffer | readonly (string | Buffer)[];
}

/** A WebSocket class whose connections trust `tls.ca` only, or the plain one without it. */
const socketClass = (tls: NodeTlsOptions | undefined): new (url: string) => RelayWebSocket => {
  if (tls === undefined) return RelayWebSocket;
  const ca = typeof tls.ca === 'string' || Buffer.isBuffer(tls.ca) ? tls.ca : [...tls.ca];
  return class extends RelayWebSocket {
    constructor(url: string) {
      super(url, { ca });
    }
  };
};

export type NodeClientOptions = Omit<KeelClientOptions, 'WebSocket' | 'storage' | 'localData'> & {
  /** Certificate trust for a `wss://` relay (a private CA in tests or on-premises); default Node's roots. */
  readonly tls?: NodeTlsOptions;
} & (
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
  const { tls, ...clientOptions } = options;
  const WebSocketImpl = socketClass(tls);
  if (!('sqlitePath' in clientOptions)) return createClient({ ...clientOptions, WebSocket: WebSocketImpl });
  const { sqlitePath, ...rest } = clientOptions;
  const storage = openSqliteClientStore(sqlitePath);
  let client: KeelClient;
  try {
    client = await createClient({ ...rest, storage, localData: sqliteFiles(storage, sqlitePath), WebSocket: WebSocketImpl });
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
