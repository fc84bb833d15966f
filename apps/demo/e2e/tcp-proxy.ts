import { type AddressInfo, type Server, type Socket, connect, createServer } from 'node:net';

/**
 * A TCP proxy the test controls, between a page and the relay. `drop()` makes it swallow all
 * traffic in both directions while keeping every socket open — a half-open link, as a dead NAT
 * or a sleeping Wi-Fi makes one; the client is told nothing. `heal()` forwards again (and resets
 * the connections made or cut while it was dropping, as a restarted NAT would).
 */
export interface TcpProxy {
  readonly port: number;
  drop(): void;
  heal(): void;
  close(): Promise<void>;
}

export const startTcpProxy = async (targetPort: number): Promise<TcpProxy> => {
  let dropping = false;
  const sockets = new Set<Socket>();
  const openedWhileDropping = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => {
        sockets.delete(s);
        openedWhileDropping.delete(s);
      });
      s.on('error', () => {});
    }
    if (dropping) openedWhileDropping.add(client).add(upstream);
    client.on('data', (chunk) => dropping || upstream.write(chunk));
    upstream.on('data', (chunk) => dropping || client.write(chunk));
    // A dropped link carries no close either: the relay giving up on its side (its heartbeat)
    // must not reach the page while dropping; the page's socket stays open, silent.
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => {
      if (dropping) openedWhileDropping.add(client);
      else client.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    drop: () => {
      dropping = true;
    },
    heal: () => {
      dropping = false;
      for (const s of openedWhileDropping) s.destroy();
      openedWhileDropping.clear();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};
