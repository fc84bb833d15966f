// Several browser tabs of one device in one Node process: a shared fake IndexedDB "origin", an
// in-process lock standing in for Web Locks, Node's BroadcastChannel, real sockets to a real relay.
import { IDBFactory, IDBKeyRange } from 'fake-indexeddb';
import { RelayWebSocket } from '../src/node.js';
import { createBrowserLeader } from '../src/browser.js';
import type { KeelClient } from '../src/client.js';
import type { ClientError } from '../src/client-api.js';
import type { Identity } from '../src/identity.js';
import type { HeldLock, LeaderLock } from '../src/tabs/leader-lock.js';
import { type LeaderClient, TabClient } from '../src/tabs/tab-client.js';

/** Nothing listens on the discard port: a dead tab's reconnects go nowhere. */
const NOWHERE = 'ws://127.0.0.1:9';

const GLOBALS = ['indexedDB', 'IDBKeyRange'] as const;

/** Installs a fresh fake IndexedDB as the globals (y-indexeddb reads them); returns the undo. */
export const installFakeIndexedDb = (): (() => void) => {
  const saved = GLOBALS.map((name) => [name, Object.getOwnPropertyDescriptor(globalThis, name)] as const);
  for (const [name, value] of [
    ['indexedDB', new IDBFactory()],
    ['IDBKeyRange', IDBKeyRange],
  ] as const) {
    Object.defineProperty(globalThis, name, { value, configurable: true, writable: true, enumerable: false });
  }
  return () => {
    for (const [name, descriptor] of saved) {
      if (descriptor) Object.defineProperty(globalThis, name, descriptor);
      else Reflect.deleteProperty(globalThis, name);
    }
  };
};

export interface Tab {
  readonly label: string;
  readonly client: TabClient;
  readonly errors: ClientError[];
  /** The KeelClient this tab ran while it led (undefined if it never led). */
  leaderClient(): KeelClient | undefined;
  /**
   * The tab dies without a goodbye: its sockets are cut (no close handshake), it stops hearing
   * and speaking on the channel, its last local writes land (a dead tab writes nothing after),
   * and only then is its lock free, as the browser frees a dead tab's Web Lock.
   */
  kill(): Promise<void>;
  /** Cuts this tab's relay link and keeps it down (the tab itself lives on). */
  cutLink(): void;
  /** Closes the tab; for a killed one, stops what it still holds (timers, store), as the browser would have. */
  dispose(): Promise<void>;
}

export interface TabOptions {
  readonly url: string;
  readonly identity: Identity;
  readonly name: string;
  readonly locks: LeaderLock;
  readonly label: string;
  readonly settleMs?: number;
}

export const openTab = async (options: TabOptions): Promise<Tab> => {
  let dead = false;
  let offline = false;
  const sockets: RelayWebSocket[] = [];
  class TabSocket extends RelayWebSocket {
    constructor(url: string) {
      super(dead || offline ? NOWHERE : url);
      sockets.push(this);
    }
  }
  const channel = new BroadcastChannel(`keel-${options.name}-tabs`);
  const held: HeldLock[] = [];
  const lock: LeaderLock = {
    acquire: async (name, signal) => {
      const h = await options.locks.acquire(name, signal);
      held.push(h);
      return h;
    },
  };
  let led: LeaderClient | undefined;
  const errors: ClientError[] = [];
  const client = await TabClient.create({
    identity: options.identity,
    name: options.name,
    lock,
    channel,
    ...(options.settleMs !== undefined ? { settleMs: options.settleMs } : {}),
    createLeader: async () => {
      // The leader exactly as createBrowserClient builds it, on this tab's sockets.
      led = await createBrowserLeader(options.name, {
        url: options.url,
        identity: options.identity,
        WebSocket: TabSocket,
        backoff: { baseMs: 50, maxMs: 500 },
      });
      return led;
    },
  });
  client.on('error', (error) => errors.push(error));
  return {
    label: options.label,
    client,
    errors,
    leaderClient: () => led?.client,
    kill: async () => {
      dead = true;
      for (const socket of sockets) socket.terminate();
      channel.close();
      if (led) await led.client.persisted();
      for (const h of held) h.release();
    },
    cutLink: () => {
      offline = true;
      for (const socket of sockets) socket.terminate();
    },
    dispose: () => client.close(),
  };
};
