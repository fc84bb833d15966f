import { constants, accessSync, statSync } from 'node:fs';
import { type RelayId, RelayIdSchema, TierNameSchema, WireLimits } from '@keel/engine';
import * as z from 'zod';
import { canonicalIp } from './server/client-address.js';

/** An integer setting that may arrive as text (flags, environment), with a readable error. */
const int = (what: string, min: number, max: number) =>
  z.preprocess(
    // Number('') is 0: an empty flag or variable must be an error, not port 0.
    (value) => (typeof value === 'string' ? (value.trim() === '' ? Number.NaN : Number(value)) : value),
    z
      .number({ error: `${what} must be a number` })
      .int(`${what} must be a whole number`)
      .min(min, `${what} must be between ${min} and ${max}`)
      .max(max, `${what} must be between ${min} and ${max}`),
  );

const DAY_MS = 24 * 60 * 60 * 1000;
const YEAR_MS = 366 * DAY_MS;

/** Price (or legacy plan) id → the paid tier it buys, e.g. {"price_basic": "basic", "price_premium": "premium"}. */
export const PriceTiersSchema = z.record(
  z.string().min(1).max(255).regex(/^[A-Za-z0-9_-]+$/, 'price ids are letters, digits, _ or -'),
  z.enum(['basic', 'premium'], { error: 'a price maps to "basic" or "premium"' }),
  { error: 'price tiers must be a JSON object of price id → "basic" | "premium"' },
);
export type PriceTiers = z.infer<typeof PriceTiersSchema>;

/** JSON text (environment) or an already-parsed object; bad JSON becomes a readable schema error. */
const jsonText = <T extends z.ZodType>(schema: T) =>
  z.preprocess((value) => {
    if (typeof value !== 'string') return value;
    try {
      return JSON.parse(value) as unknown;
    } catch {
      return Symbol('not JSON');
    }
  }, schema);

/** True when `path` is a regular file this process may read (checked at start, not at the first handshake). */
const isReadableFile = (path: string): boolean => {
  try {
    accessSync(path, constants.R_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
};

/** A PEM file the relay reads at start: its path, which must name a readable file. */
const pemFile = (what: string) =>
  z
    .string()
    .min(1, `${what} must be a file path`)
    .max(4096)
    .refine(isReadableFile, { error: (issue) => `${what} ${JSON.stringify(issue.input)} is not a readable file` });

/** Relay configuration: defaults here, overridden by environment, overridden by CLI flags. */
export const RelayConfigSchema = z.strictObject({
  port: int('port', 0, 65535).default(8787),
  host: z
    .string()
    .min(1, 'host must not be empty')
    .max(253)
    .regex(/^[A-Za-z0-9.:_-]+$/, 'host must be a hostname or IP address')
    .default('127.0.0.1'),
  db: z.string().min(1, 'db must be a file path or :memory:').default('keel-relay.db'),
  /**
   * This deployment's id, bound into every auth challenge and pinned by devices on first contact.
   * Absent: the id the store keeps (generated at the first start). No shared default: two
   * deployments with one name could pass a device's answer from one to the other.
   */
  relayId: RelayIdSchema.optional(),
  /**
   * Largest WebSocket frame accepted after authentication; bigger frames close the socket with
   * 1009. Devices learn it in `ready` and send larger updates in parts. Parsing, validating and
   * verifying a frame happen in one event-loop turn each, so this bounds how long one frame can
   * hold the loop: ~5 ms at 1 MiB, ~300 ms at 32 MiB (measured, test/attacks/big-frames.test.ts).
   */
  maxPayloadBytes: int('max payload', 4096, 64 * 1024 * 1024).default(WireLimits.defaultMaxFrameBytes),
  authTimeoutMs: int('auth timeout', 100, 120_000).default(10_000),
  /** Bad frames tolerated on one connection before it is closed (4000). */
  maxBadFrames: int('max bad frames', 1, 10_000).default(32),
  /** Interval of WebSocket pings; a socket that misses one is dropped (half-open connections). */
  heartbeatMs: int('heartbeat', 100, 600_000).default(30_000),
  synchronous: z.enum(['FULL', 'NORMAL']).default('FULL'),
  /**
   * How long log entries covered by a snapshot are kept before pruning, so a device slightly
   * behind still catches up entry by entry. Default one day.
   */
  snapshotRetentionMs: int('snapshot retention', 0, 365 * 86_400_000).default(86_400_000),
  /** Bearer token for operator commands (`keel-relay tier set`); admin endpoints are off without it. */
  adminToken: z.string().min(24, 'admin token must be at least 24 characters').max(512).optional(),
  /**
   * Bearer token for `GET /metrics`. Without one, /metrics answers only on a relay bound to a
   * loopback address (the scraper runs on the same host); a relay bound to any other address
   * refuses it (403) until a token is set, as its gauges tell when users' devices are online.
   */
  metricsToken: z.string().min(24, 'metrics token must be at least 24 characters').max(512).regex(/^[\x21-\x7e]+$/, 'metrics token must be printable ASCII without spaces').optional(),
  /** Tier of users no payment event or operator has set; the free tier unless a deployment says otherwise. */
  defaultTier: TierNameSchema.default('trial'),
  /** JSON file of tier overrides, e.g. {"trial": {"batchWindowMs": 10000}}; docs/design.md's matrix otherwise. */
  tiersFile: z.string().min(1).optional(),
  logLevel: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  /**
   * Who may create a user: anyone who reaches the relay (`open`), or only a first device that
   * presents an unused, unexpired signup token (`token`, auth/signup-tokens.ts).
   */
  registration: z.enum(['open', 'token'], { error: 'registration must be "open" or "token"' }).default('open'),
  /** Payment webhook endpoint secret (Stripe's `whsec_…`); POST /webhooks/payments answers 503 without it. */
  webhookSecret: z.string().min(16, 'webhook secret must be at least 16 characters').max(512).optional(),
  /** How far a webhook signature's timestamp may be from the relay's clock (s); Stripe's default 300. */
  webhookToleranceSeconds: int('webhook tolerance', 1, 86_400).default(300),
  /** Inline JSON price-to-tier map (environment); see `priceTiersFile` for a file. */
  priceTiers: jsonText(PriceTiersSchema).default({}),
  /** JSON file with the price-to-tier map. */
  priceTiersFile: z.string().min(1).optional(),
  // ── Bounds on what one connection or user can make the relay hold or spend ──
  /** Largest frame before authentication (hello with its certificate chain fits in 4 KiB). */
  preAuthMaxBytes: int('pre-auth frame limit', 1024, 64 * 1024).default(8 * 1024),
  /** Unauthenticated connections at once; more are refused (1013) until some authenticate or time out. */
  maxPendingConnections: int('max pending connections', 1, 1_000_000).default(1024),
  /** New WebSocket connections one address (IPv4, or IPv6 /64) may open at once; past it the upgrade is answered 429. */
  addressConnectBurst: int('connections per address burst', 1, 1_000_000).default(128),
  /** New WebSocket connections per second one address may open, sustained. */
  addressConnectPerSecond: int('connections per address per second', 1, 1_000_000).default(32),
  /** Unauthenticated connections of one address at once (a share of max pending connections). */
  maxPendingPerAddress: int('max pending connections per address', 1, 1_000_000).default(256),
  /** Authenticated connections of one user at once. */
  maxConnectionsPerUser: int('max connections per user', 1, 10_000).default(32),
  /** Documents one connection may be subscribed to at once. */
  maxSubscriptions: int('max subscriptions', 1, 1_000_000).default(4096),
  /** Characters queued to one connection past which it counts as not reading and is dropped (4007). */
  maxOutboundBytes: int('max outbound bytes', 1024 * 1024, 1024 * 1024 * 1024).default(16 * 1024 * 1024),
  /** Live (not revoked) devices of one user. */
  maxDevicesPerUser: int('max devices per user', 1, 256).default(32),
  /** Devices one user may ever register, revoked ones included. */
  maxRegistrationsPerUser: int('max registrations per user', 1, 100_000).default(256),
  /** Key epochs one user may publish (one per revocation). */
  maxEpochsPerUser: int('max key epochs per user', 1, 100_000).default(256),
  /** Pairing codes one connection may offer at once. */
  maxPairingsPerDevice: int('max pairing codes per device', 1, 64).default(4),
  /** Crisis-lane bytes of one user (all devices) per UTC day past which an anomaly is flagged: log, metric, audit, alert. */
  crisisAnomalyBytes: int('crisis anomaly threshold', 1024, 1024 * 1024 * 1024).default(16 * 1024 * 1024),
  /** Crisis-lane bytes of one device per UTC day past which crisis envelopes are deferred (a disk-safety bound). */
  crisisCeilingBytes: int('crisis ceiling', 1024, 64 * 1024 * 1024 * 1024).default(1024 * 1024 * 1024),
  /** First grace period of a premium user (ms); docs/design.md: 14 days. */
  gracePremiumMs: int('premium grace period', 1, YEAR_MS).default(14 * DAY_MS),
  /** First grace period of a basic user (ms): 7 days. */
  graceBasicMs: int('basic grace period', 1, YEAR_MS).default(7 * DAY_MS),
  /** Failures this far back shorten the next grace period (ms): 90 days. */
  graceWindowMs: int('grace failure window', 0, 10 * YEAR_MS).default(90 * DAY_MS),
  /** Shortest grace period after repeated failures (ms): 1 day. */
  graceFloorMs: int('grace floor', 1, YEAR_MS).default(DAY_MS),
  // ── Operator alerts (crisis SLA breaches, missing receipts, crisis-lane anomalies) ──
  /** Where alerts are POSTed, signed with `alertSecret`; without it alerts are an error log line and a metric. */
  alertUrl: z
    .url({ protocol: /^https?$/, error: 'alert URL must be an http(s) URL' })
    .max(2048)
    .optional(),
  /** HMAC-SHA256 key of the `keel-signature` header on alert POSTs. */
  alertSecret: z.string().min(16, 'alert secret must be at least 16 characters').max(512).optional(),
  /** HMAC secret of the operator's crisis service: enables `POST /crisis` (external crisis signals). */
  crisisSecret: z.string().min(16, 'crisis secret must be at least 16 characters').max(512).optional(),
  /**
   * The operator's crisis authority public keys (base64url Ed25519, comma-separated in the
   * environment): given, `POST /crisis` takes only signals signed by one of them.
   */
  crisisAuthorityKeys: z
    .preprocess(
      (value) => (typeof value === 'string' ? value.split(',').map((k) => k.trim()).filter((k) => k !== '') : value),
      z.array(z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'a crisis authority key is 32 bytes of base64url (43 characters)')).max(8),
    )
    .default([]),
  /** How long a connected device may take to confirm a crisis entry before the receipt counts as missing (ms). */
  crisisReceiptTimeoutMs: int('crisis receipt timeout', 200, 600_000).default(5_000),
  // HTTP edge: how long a client may take to send a request (slow-loris defence). Not 0: Node
  // would take that as "never time out".
  /** Until a request's headers are complete (ms); Node's `headersTimeout`, answered 408 and closed. */
  httpHeadersTimeoutMs: int('HTTP headers timeout', 100, 600_000).default(10_000),
  /** Until a whole request, headers and body, is in (ms); Node's `requestTimeout`. */
  httpRequestTimeoutMs: int('HTTP request timeout', 100, 3_600_000).default(30_000),
  /** Until an admin or webhook body is in, counted from when the relay starts reading it (ms); 408 and closed. */
  httpBodyTimeoutMs: int('HTTP body timeout', 100, 600_000).default(10_000),
  // ── TLS and proxies (docs/deployment.md) ──
  /** PEM certificate chain: with `tlsKey`, the relay serves https:// and wss:// on its one port. */
  tlsCert: pemFile('TLS certificate').optional(),
  /** PEM private key of `tlsCert`. Keep it readable by the relay's user only. */
  tlsKey: pemFile('TLS key').optional(),
  /**
   * The one peer (a reverse proxy on this host, e.g. 127.0.0.1) whose X-Forwarded-For header
   * names the client's address for per-address limits (new connections, failed admin logins);
   * from any other peer the header is ignored. Without it every request counts against the
   * socket's address, which behind a proxy is the proxy's: every device would share one budget.
   */
  trustedProxy: z
    .string()
    .max(64)
    .transform((value, ctx) => {
      const ip = canonicalIp(value.trim());
      if (ip === undefined) {
        ctx.addIssue({ code: 'custom', message: 'trusted proxy must be one IPv4 or IPv6 address (no names, no ranges)' });
        return z.NEVER;
      }
      return ip;
    })
    .optional(),
}).superRefine((config, ctx) => {
  // Half a TLS configuration would silently serve plain ws://; refuse it instead.
  if ((config.tlsCert === undefined) !== (config.tlsKey === undefined)) {
    ctx.addIssue({
      code: 'custom',
      path: [config.tlsCert === undefined ? 'tlsCert' : 'tlsKey'],
      message: 'TLS needs both a certificate and its key (or neither, for plain ws:// behind a proxy)',
    });
  }
}).superRefine((config, ctx) => {
  // Otherwise the floor would lengthen a first grace period beyond its configured base.
  if (config.crisisAnomalyBytes > config.crisisCeilingBytes) {
    ctx.addIssue({ code: 'custom', path: ['crisisAnomalyBytes'], message: 'the crisis anomaly threshold must not be above the crisis ceiling' });
  }
  if (config.alertUrl !== undefined && config.alertSecret === undefined) {
    ctx.addIssue({ code: 'custom', path: ['alertSecret'], message: 'an alert URL needs an alert secret to sign with' });
  }
  if (config.preAuthMaxBytes > config.maxPayloadBytes) {
    ctx.addIssue({ code: 'custom', path: ['preAuthMaxBytes'], message: 'the pre-auth frame limit must not be above the frame limit' });
  }
  if (config.graceFloorMs > Math.min(config.graceBasicMs, config.gracePremiumMs)) {
    ctx.addIssue({ code: 'custom', path: ['graceFloorMs'], message: 'grace floor must not be longer than the basic or premium grace period' });
  }
}).superRefine((config, ctx) => {
  // Node refuses to start a server whose headers timeout exceeds its request timeout (ERR_OUT_OF_RANGE).
  if (config.httpHeadersTimeoutMs > config.httpRequestTimeoutMs) {
    ctx.addIssue({
      code: 'custom',
      path: ['httpHeadersTimeoutMs'],
      message: `HTTP headers timeout (${config.httpHeadersTimeoutMs} ms) must not be longer than the request timeout (${config.httpRequestTimeoutMs} ms), which includes the headers`,
    });
  }
  // A longer body timeout would never fire: the request timeout would always end a slow body first.
  if (config.httpBodyTimeoutMs > config.httpRequestTimeoutMs) {
    ctx.addIssue({
      code: 'custom',
      path: ['httpBodyTimeoutMs'],
      message: `HTTP body timeout (${config.httpBodyTimeoutMs} ms) must not be longer than the request timeout (${config.httpRequestTimeoutMs} ms), which includes the body`,
    });
  }
});
export type RelayConfig = z.infer<typeof RelayConfigSchema>;
/** The configuration of a running relay: its id resolved (configured, or kept by its store). */
export type ServingConfig = RelayConfig & { readonly relayId: RelayId };
export type RelayConfigInput = z.input<typeof RelayConfigSchema>;

/** Environment variables the relay reads, by config key. */
export const ENV_VARS = {
  port: 'KEEL_RELAY_PORT',
  host: 'KEEL_RELAY_HOST',
  db: 'KEEL_RELAY_DB',
  relayId: 'KEEL_RELAY_ID',
  maxPayloadBytes: 'KEEL_RELAY_MAX_PAYLOAD_BYTES',
  authTimeoutMs: 'KEEL_RELAY_AUTH_TIMEOUT_MS',
  maxBadFrames: 'KEEL_RELAY_MAX_BAD_FRAMES',
  heartbeatMs: 'KEEL_RELAY_HEARTBEAT_MS',
  snapshotRetentionMs: 'KEEL_RELAY_SNAPSHOT_RETENTION_MS',
  synchronous: 'KEEL_RELAY_SYNCHRONOUS',
  adminToken: 'KEEL_RELAY_ADMIN_TOKEN',
  metricsToken: 'KEEL_RELAY_METRICS_TOKEN',
  tiersFile: 'KEEL_RELAY_TIERS_FILE',
  defaultTier: 'KEEL_RELAY_DEFAULT_TIER',
  logLevel: 'KEEL_RELAY_LOG_LEVEL',
  registration: 'KEEL_RELAY_REGISTRATION',
  webhookSecret: 'KEEL_RELAY_WEBHOOK_SECRET',
  webhookToleranceSeconds: 'KEEL_RELAY_WEBHOOK_TOLERANCE_S',
  priceTiers: 'KEEL_RELAY_PRICE_TIERS',
  priceTiersFile: 'KEEL_RELAY_PRICE_TIERS_FILE',
  preAuthMaxBytes: 'KEEL_RELAY_PREAUTH_MAX_BYTES',
  maxPendingConnections: 'KEEL_RELAY_MAX_PENDING_CONNECTIONS',
  addressConnectBurst: 'KEEL_RELAY_ADDRESS_CONNECT_BURST',
  addressConnectPerSecond: 'KEEL_RELAY_ADDRESS_CONNECT_PER_SECOND',
  maxPendingPerAddress: 'KEEL_RELAY_MAX_PENDING_PER_ADDRESS',
  maxConnectionsPerUser: 'KEEL_RELAY_MAX_CONNECTIONS_PER_USER',
  maxSubscriptions: 'KEEL_RELAY_MAX_SUBSCRIPTIONS',
  maxOutboundBytes: 'KEEL_RELAY_MAX_OUTBOUND_BYTES',
  maxDevicesPerUser: 'KEEL_RELAY_MAX_DEVICES_PER_USER',
  maxRegistrationsPerUser: 'KEEL_RELAY_MAX_REGISTRATIONS_PER_USER',
  maxEpochsPerUser: 'KEEL_RELAY_MAX_EPOCHS_PER_USER',
  maxPairingsPerDevice: 'KEEL_RELAY_MAX_PAIRINGS_PER_DEVICE',
  crisisAnomalyBytes: 'KEEL_RELAY_CRISIS_ANOMALY_BYTES',
  crisisCeilingBytes: 'KEEL_RELAY_CRISIS_CEILING_BYTES',
  gracePremiumMs: 'KEEL_RELAY_GRACE_PREMIUM_MS',
  graceBasicMs: 'KEEL_RELAY_GRACE_BASIC_MS',
  graceWindowMs: 'KEEL_RELAY_GRACE_WINDOW_MS',
  graceFloorMs: 'KEEL_RELAY_GRACE_FLOOR_MS',
  alertUrl: 'KEEL_RELAY_ALERT_URL',
  alertSecret: 'KEEL_RELAY_ALERT_SECRET',
  crisisReceiptTimeoutMs: 'KEEL_RELAY_CRISIS_RECEIPT_TIMEOUT_MS',
  crisisSecret: 'KEEL_RELAY_CRISIS_SECRET',
  crisisAuthorityKeys: 'KEEL_RELAY_CRISIS_AUTHORITY_KEYS',
  httpHeadersTimeoutMs: 'KEEL_RELAY_HTTP_HEADERS_TIMEOUT_MS',
  httpRequestTimeoutMs: 'KEEL_RELAY_HTTP_REQUEST_TIMEOUT_MS',
  httpBodyTimeoutMs: 'KEEL_RELAY_HTTP_BODY_TIMEOUT_MS',
  tlsCert: 'KEEL_RELAY_TLS_CERT',
  tlsKey: 'KEEL_RELAY_TLS_KEY',
  trustedProxy: 'KEEL_RELAY_TRUSTED_PROXY',
} as const satisfies Record<keyof RelayConfig, string>;
