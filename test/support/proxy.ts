import { type Server, type Socket, createConnection, createServer } from 'node:net';
import type { AddressInfo } from 'node:net';

/** A TCP proxy in front of the relay that can drop a device off the network and back. */
export interface NetworkProxy {
  readonly url: string;
  /** Cuts every open connection and refuses new ones until set back online. */
  setOffline(offline: boolean): void;
  /** Keeps connections open but silently drops what devices send (a dead link the client cannot see). */
  setBlackhole(blackhole: boolean): void;
  close(): Promise<void>;
}

export const startProxy = async (targetPort: number): Promise<NetworkProxy> => {
  const sockets = new Set<Socket>();
  let offline = false;
  let blackhole = false;
  const server: Server = createServer((client) => {
    if (offline) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (chunk: Buffer) => {
      if (!blackhole) upstream.write(chunk);
    });
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `ws://127.0.0.1:${port}`,
    setOffline(value) {
      offline = value;
      if (value) for (const s of sockets) s.destroy();
    },
    setBlackhole(value) {
      blackhole = value;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};
