import type { IncomingHttpHeaders } from 'node:http';
import { isIP } from 'node:net';

/** An IPv4 client as a dual-stack socket reports it. */
const IPV4_MAPPED = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i;

/**
 * One spelling per address, so a configured proxy matches the socket's report of it: IPv4 as is
 * (an IPv4-mapped IPv6 address becomes its IPv4), IPv6 compressed and lower-case as WHATWG URLs
 * write it. Anything that is not one IP literal (names, ranges, lists) is `undefined`.
 */
export const canonicalIp = (value: string | undefined): string | undefined => {
  if (value === undefined) return undefined;
  const mapped = IPV4_MAPPED.exec(value);
  if (mapped && isIP(mapped[1]!) === 4) return mapped[1]!;
  const family = isIP(value);
  if (family === 4) return value;
  if (family !== 6) return undefined;
  // A zone id (fe80::1%eth0) is not valid in a URL; such an address is compared as written.
  if (value.includes('%')) return value.toLowerCase();
  return new URL(`http://[${value}]/`).hostname.slice(1, -1);
};

/** The parts of a request the client's address is read from. */
export interface AddressedRequest {
  readonly socket: { readonly remoteAddress?: string | undefined };
  readonly headers: IncomingHttpHeaders;
}

/**
 * The address a request is counted against by the per-address limits (new WebSocket
 * connections, failed admin logins). The socket's peer, unless that
 * peer is the one configured trusted proxy: then the last entry of X-Forwarded-For, the address
 * the proxy itself saw (entries before it are whatever the client chose to send). A request
 * from the proxy without a usable header counts against the proxy, never against a guess.
 * Used for budgets only; addresses are never logged.
 */
export const clientAddress = (req: AddressedRequest, trustedProxy: string | undefined): string | undefined => {
  const peer = req.socket.remoteAddress;
  if (trustedProxy === undefined || canonicalIp(peer) !== trustedProxy) return peer;
  const header = req.headers['x-forwarded-for'];
  const last = (Array.isArray(header) ? header.join(',') : (header ?? '')).split(',').at(-1)?.trim();
  return canonicalIp(last) ?? peer;
};
