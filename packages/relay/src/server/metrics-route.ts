import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import type { LogThrottle } from '../log-throttle.js';
import type { RelayMetrics } from '../observe/metrics.js';
import { HttpErrorCode, type MetricsRefusal } from './http-codes.js';
import { sendJson } from './http-util.js';
import type { RefusalSink } from './refusal-counters.js';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Whether `host` (the address the relay binds) is a loopback address: only local processes reach it. */
export const isLoopbackHost = (host: string): boolean => {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (bare === 'localhost') return true;
  const version = isIP(bare);
  if (version === 4) return bare.startsWith('127.');
  if (version === 6) return bare === '::1' || bare.toLowerCase().startsWith('::ffff:127.');
  return false;
};

export interface MetricsRouteDeps {
  readonly metrics: RelayMetrics;
  /** Bearer token a scrape must present; undefined: open on a loopback-bound relay, refused otherwise. */
  readonly token: string | undefined;
  /** The address the relay binds. */
  readonly host: string;
  readonly throttle: LogThrottle;
  readonly refusals: RefusalSink<MetricsRefusal>;
}

/**
 * `GET /metrics` in Prometheus text format, on the relay's own listener. The gauges say how many
 * devices are online, which on a relay open to the internet would tell anyone when a user's
 * devices come and go (what /healthz deliberately omits): so without a token it answers only on
 * a loopback-bound relay, and with one it checks `Authorization: Bearer` in constant time.
 * A token is at least 24 characters, so guessing is not rate-limited beyond the throttled log line.
 */
export const createMetricsRoute = (deps: MetricsRouteDeps) => {
  const expected = deps.token === undefined ? undefined : digest(deps.token);
  const open = expected === undefined && isLoopbackHost(deps.host);
  const refuse = (res: ServerResponse, status: number, code: MetricsRefusal, message: string) => {
    deps.refusals.count(code);
    deps.throttle.log(`metrics.${code}`, 'warn', 'metrics scrape refused', { code });
    sendJson(res, status, { error: code, message });
  };
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (!open) {
      if (expected === undefined) {
        return refuse(res, 403, HttpErrorCode.METRICS_DISABLED, 'set KEEL_RELAY_METRICS_TOKEN to scrape /metrics on a relay not bound to loopback');
      }
      const header = req.headers.authorization ?? '';
      const presented = header.startsWith('Bearer ') ? header.slice(7) : '';
      if (!timingSafeEqual(digest(presented), expected)) return refuse(res, 401, HttpErrorCode.NOT_AUTHENTICATED, 'missing or wrong bearer token');
    }
    const text = await deps.metrics.render();
    res.writeHead(200, { 'content-type': deps.metrics.contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  };
};
