/**
 * Error codes of the relay's HTTP endpoints (health, admin, routing), as `{error, message}`
 * bodies. The payment webhook's own codes are in webhooks/webhook-codes.ts.
 */
export const HttpErrorCode = {
  NOT_FOUND: 'NOT_FOUND',
  /** The relay's own fault (500). */
  INTERNAL: 'INTERNAL',
  /** No admin token configured (403). */
  ADMIN_DISABLED: 'ADMIN_DISABLED',
  /** /metrics without a token on a relay not bound to loopback (403). */
  METRICS_DISABLED: 'METRICS_DISABLED',
  /** The relay is shutting down or its store does not answer (/readyz, 503). */
  NOT_READY: 'NOT_READY',
  /** Missing or wrong bearer token (401). */
  NOT_AUTHENTICATED: 'NOT_AUTHENTICATED',
  /** Too many failed admin logins from this address, or from everyone; see Retry-After (429). */
  RATE_LIMITED: 'RATE_LIMITED',
  /** The request body did not arrive within the body timeout (408, connection closed). */
  BODY_TIMEOUT: 'BODY_TIMEOUT',
  /** Body over the endpoint's size limit (413). */
  FRAME_TOO_LARGE: 'FRAME_TOO_LARGE',
  BAD_JSON: 'BAD_JSON',
  SCHEMA: 'SCHEMA',
  // Answered by Node's parser stage, as a bare status line before any handler ran.
  /** Headers (or the whole request) not in within the configured timeout (408, connection closed). */
  REQUEST_TIMEOUT: 'REQUEST_TIMEOUT',
  /** Headers above Node's 16 KiB limit (431). */
  HEADERS_TOO_LARGE: 'HEADERS_TOO_LARGE',
  /** Not parseable as HTTP/1.1 (400). */
  BAD_REQUEST: 'BAD_REQUEST',
  /** A WebSocket upgrade from an address past its new-connection rate (429, Retry-After). */
  ADDRESS_RATE_LIMITED: 'ADDRESS_RATE_LIMITED',
  /** A WebSocket upgrade from an address holding its share of unauthenticated connections (429). */
  ADDRESS_PENDING_LIMIT: 'ADDRESS_PENDING_LIMIT',
} as const;
export type HttpErrorCode = (typeof HttpErrorCode)[keyof typeof HttpErrorCode];

/** Admin refusals anyone can cause without the token: counted in memory, logged rate-limited. */
export const ADMIN_UNAUTHENTICATED_REFUSALS = [HttpErrorCode.ADMIN_DISABLED, HttpErrorCode.NOT_AUTHENTICATED, HttpErrorCode.RATE_LIMITED] as const;
export type AdminUnauthenticatedRefusal = (typeof ADMIN_UNAUTHENTICATED_REFUSALS)[number];

/** Requests refused before routing (slow, oversized or malformed): counted in memory only. */
export const PARSER_REFUSALS = [HttpErrorCode.REQUEST_TIMEOUT, HttpErrorCode.HEADERS_TOO_LARGE, HttpErrorCode.BAD_REQUEST] as const;
export type ParserRefusal = (typeof PARSER_REFUSALS)[number];
/** ...and WebSocket upgrades refused for their address (per-address limits), answered 429. */
export const CONNECTION_REFUSALS = [...PARSER_REFUSALS, HttpErrorCode.ADDRESS_RATE_LIMITED, HttpErrorCode.ADDRESS_PENDING_LIMIT] as const;
export type ConnectionRefusal = (typeof CONNECTION_REFUSALS)[number];

/** /metrics refusals: counted in memory, logged rate-limited. */
export const METRICS_REFUSALS = [HttpErrorCode.METRICS_DISABLED, HttpErrorCode.NOT_AUTHENTICATED] as const;
export type MetricsRefusal = (typeof METRICS_REFUSALS)[number];
