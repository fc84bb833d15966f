// @keel/client/node — Node-only parts: the SQLite store and a client wired to `ws`.
import { WebSocket } from 'ws';
import { type KeelClient, type KeelClientOptions, createClient } from './client.js';
import { openSqliteClientStore } from './storage/sqlite-store.js';

export { openSqliteClientStore };

/** A client using the `ws` package for its WebSocket. */
export const createNodeClient = (options: Omit<KeelClientOptions, 'WebSocket'>): Promise<KeelClient> =>
  createClient({ ...options, WebSocket: WebSocket });
