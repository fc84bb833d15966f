import { type IncomingMessage, type Server, type ServerOptions, type ServerResponse, createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import type { CrisisSignal, UserId } from '@keel/engine';
import type { RelayConfig } from '../config.js';
import type { Entitlements } from '../entitlements/entitlements.js';
import type { PaymentProcessor } from '../entitlements/payments.js';
import type { HttpRefusalArea, RelayEvents } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import type { RelayMetrics } from '../observe/metrics.js';
import { createLogThrottle } from '../log-throttle.js';
import type { RelayStore } from '../storage/relay-store.js';
import type { UnauthenticatedRefusal } from '../webhooks/webhook-codes.js';
import { createWebhookHandler } from '../webhooks/webhook-handler.js';
import { createCrisisSignalRoute, parseAuthorityKeys } from '../crisis/crisis-signals.js';
import { createAdminHandler } from './admin.js';
import type { AuthFailureLimits } from './auth-failure-limiter.js';
import { type AdminUnauthenticatedRefusal, type ConnectionRefusal, HttpErrorCode, type MetricsRefusal, type ParserRefusal } from './http-codes.js';
import { sendJson } from './http-util.js';
import { createMetricsRoute } from './metrics-route.js';
import type { RefusalSink } from './refusal-counters.js';
import { type TlsCredentials, secureContextOptions } from './tls-credentials.js';

/** Idle time of a keep-alive connection between requests (Node's default, stated as a decision). */
const KEEP_ALIVE_TIMEOUT_MS = 5_000;

/**
 * Refusals anyone can cause, by where they happen: told on the event bus as `httpRefused` (the
 * metrics listener counts them), never written to the audit trail.
 */
export interface HttpRefusals {
  /** Slow, oversized or unparseable requests, refused before any route. */
  readonly connection: RefusalSink<ConnectionRefusal>;
  readonly admin: RefusalSink<AdminUnauthenticatedRefusal>;
  readonly webhook: RefusalSink<UnauthenticatedRefusal>;
  readonly metrics: RefusalSink<MetricsRefusal>;
}

/** Sinks that tell each refusal on `events`, with its area. */
export const createHttpRefusals = (events: RelayEvents): HttpRefusals => {
  const sink = <C extends string>(area: HttpRefusalArea): RefusalSink<C> => ({ count: (code) => events.emit('httpRefused', { area, code }) });
  return { connection: sink('connection'), admin: sink('admin'), webhook: sink('webhook'), metrics: sink('metrics') };
};

export interface HttpServerDeps {
  readonly config: RelayConfig;
  readonly store: RelayStore;
  readonly log: Logger;
  readonly now: () => number;
  readonly entitlements: Entitlements;
  readonly payments: PaymentProcessor;
  /** The relay's event bus (webhook outcomes are told there). */
  readonly events: RelayEvents;
  /** What `GET /metrics` renders. */
  readonly metrics: RelayMetrics;
  /** Sends an external crisis signal to every connected device of the user; how many devices were online. */
  deliverCrisisSignal(user: UserId, signal: CrisisSignal): number;
  /** False once the relay is shutting down: `/readyz` answers 503 from then on. */
  serving(): boolean;
  /** Where refusals are counted; the bus (`httpRefused`) unless a test passes its own. */
  readonly refusals?: HttpRefusals;
  /** Failed admin login budgets; the defaults unless a test injects others. */
  readonly adminLimits?: AuthFailureLimits;
  /** Certificate and key: the server speaks HTTPS (and so WSS) instead of plain HTTP. */
  readonly tls?: TlsCredentials;
}

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

/** The bare answers Node would give itself, had the relay no 'clientError' listener. */
const CLIENT_ERROR_ANSWERS: Readonly<Record<ParserRefusal, string>> = {
  REQUEST_TIMEOUT: 'HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n',
  HEADERS_TOO_LARGE: 'HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\r\n',
  BAD_REQUEST: 'HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n',
};

const clientErrorCode = (code: string | undefined): ParserRefusal => {
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return HttpErrorCode.REQUEST_TIMEOUT;
  if (code === 'HPE_HEADER_OVERFLOW') return HttpErrorCode.HEADERS_TOO_LARGE;
  return HttpErrorCode.BAD_REQUEST;
};

/**
 * The relay's HTTP side: `GET /healthz`, `GET /readyz`, `GET /metrics`, `/admin/*`,
 * `POST /webhooks/payments`, with timeouts
 * that let no client hold a connection by sending slowly. WebSocket upgrades are not routed
 * here; the caller attaches its WebSocketServer to the returned server.
 */
export const createHttpServer = (deps: HttpServerDeps): Server => {
  const { config, store, log, now } = deps;
  const startedAt = now();
  const throttle = createLogThrottle({ log, now });
  const refusals = deps.refusals ?? createHttpRefusals(deps.events);
  const admin = createAdminHandler({
    token: config.adminToken,
    entitlements: deps.entitlements,
    log,
    throttle,
    refusals: refusals.admin,
    now,
    bodyTimeoutMs: config.httpBodyTimeoutMs,
    trustedProxy: config.trustedProxy,
    ...(deps.adminLimits ? { limits: deps.adminLimits } : {}),
  });
  const webhooks = createWebhookHandler({
    secret: config.webhookSecret,
    toleranceSeconds: config.webhookToleranceSeconds,
    payments: deps.payments,
    store,
    log,
    throttle,
    refusals: refusals.webhook,
    events: deps.events,
    now,
    bodyTimeoutMs: config.httpBodyTimeoutMs,
  });

  const crisis = createCrisisSignalRoute({
    secret: config.crisisSecret,
    authorityKeys: parseAuthorityKeys(config.crisisAuthorityKeys),
    relayId: config.relayId,
    toleranceSeconds: config.webhookToleranceSeconds,
    store,
    log,
    throttle,
    events: deps.events,
    now,
    bodyTimeoutMs: config.httpBodyTimeoutMs,
    deliver: (user, signal) => deps.deliverCrisisSignal(user, signal),
  });

  const metrics = createMetricsRoute({ metrics: deps.metrics, token: config.metricsToken, host: config.host, throttle, refusals: refusals.metrics });

  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (req.method === 'GET' && path === '/healthz') {
      try {
        await store.ping();
        // No connection count: it would tell anyone watching when a user's devices come online.
        sendJson(res, 200, { status: 'ok', relay: config.relayId, uptimeSeconds: Math.round((now() - startedAt) / 1000) });
      } catch (error) {
        throttle.log('health.failed', 'error', 'health check failed', { error: messageOf(error) });
        sendJson(res, 503, { status: 'unavailable', relay: config.relayId, reason: 'store unavailable' });
      }
      return;
    }
    if (req.method === 'GET' && path === '/readyz') {
      // Ready: not shutting down, and the store answers. A load balancer stops sending devices
      // here once it says 503; /healthz (liveness) stays 200 while the process is fine.
      let reason: string | undefined = deps.serving() ? undefined : 'shutting down';
      if (reason === undefined) {
        try {
          await store.ping();
        } catch (error) {
          throttle.log('ready.failed', 'error', 'readiness check failed', { error: messageOf(error) });
          reason = 'store unavailable';
        }
      }
      if (reason === undefined) sendJson(res, 200, { status: 'ready', relay: config.relayId });
      else sendJson(res, 503, { status: 'unavailable', error: HttpErrorCode.NOT_READY, relay: config.relayId, reason });
      return;
    }
    if (req.method === 'GET' && path === '/metrics') return metrics(req, res);
    if (await admin(req, res, path)) return;
    if (await webhooks(req, res, path)) return;
    if (await crisis(req, res, path)) return;
    sendJson(res, 404, { error: HttpErrorCode.NOT_FOUND, message: `no route for ${req.method} ${path}` });
  };

  // The response in flight on each socket, so a parser error never writes into the middle of one.
  const inFlight = new WeakMap<Duplex, ServerResponse>();
  const options: ServerOptions = {
    headersTimeout: config.httpHeadersTimeoutMs,
    requestTimeout: config.httpRequestTimeoutMs,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    // Node checks both timeouts only this often (default 30 s, which would stretch a 10 s
    // headers timeout to 40). A quarter of the headers timeout bounds the overshoot at 25 %;
    // the check walks only connections with an unfinished request, so 1 s is cheap enough.
    connectionsCheckingInterval: Math.min(1_000, Math.max(25, Math.floor(config.httpHeadersTimeoutMs / 4))),
  };
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    inFlight.set(req.socket, res);
    route(req, res).catch((error: unknown) => {
      // Rate-limited: whatever made a handler throw, a client may be able to repeat it.
      throttle.log('http.handler_failed', 'error', 'http handler failed', { error: messageOf(error) });
      if (!res.headersSent) sendJson(res, 500, { error: HttpErrorCode.INTERNAL, message: 'internal relay error' });
      else res.destroy();
    });
  };
  const server: Server = deps.tls
    ? createHttpsServer(
        {
          ...options,
          ...secureContextOptions(deps.tls),
          // A client that opens a socket and never finishes the handshake is held no longer than one
          // that never finishes its headers (Node's default is 120 s).
          handshakeTimeout: config.httpHeadersTimeoutMs,
        },
        handler,
      )
    : createServer(options, handler);
  // Sockets whose TLS handshake finished. Node's https server reports a failed or timed-out
  // handshake as a 'clientError' too; there is no HTTP connection yet to answer on (an HTTP
  // answer written there waits for a handshake that never comes, and holds the socket open).
  const secured = new WeakSet<Duplex>();
  if (deps.tls) server.on('secureConnection', (socket: Duplex) => secured.add(socket));
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    // The peer is gone already; there is nobody to answer.
    if (error.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    if (deps.tls && !secured.has(socket)) {
      refusals.connection.count(error.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? HttpErrorCode.REQUEST_TIMEOUT : HttpErrorCode.BAD_REQUEST);
      socket.destroy();
      return;
    }
    const code = clientErrorCode(error.code);
    refusals.connection.count(code);
    const res = inFlight.get(socket);
    if (res && res.headersSent && !res.writableFinished) {
      socket.destroy();
      return;
    }
    // Destroyed once written, not merely ended: the server keeps half-open sockets, and a slow
    // client would otherwise hold this one for as long as it kept its own side open.
    socket.end(CLIENT_ERROR_ANSWERS[code], () => socket.destroy());
  });
  // Suppressed-line counts still pending reach the log before the relay stops.
  server.on('close', () => throttle.flush());
  return server;
};
