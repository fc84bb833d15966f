import { TierNameSchema } from '@keel/engine';
import { z } from 'zod';

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
  /** Name bound into every auth challenge, so an answer cannot be replayed to another relay. */
  relayId: z.string().min(1).max(128).regex(/^[\x21-\x7e]+$/, 'relay id must be printable ASCII without spaces').default('keel-relay'),
  /** Largest WebSocket frame accepted; bigger frames close the socket with 1009. */
  maxPayloadBytes: int('max payload', 4096, 256 * 1024 * 1024).default(32 * 1024 * 1024),
  authTimeoutMs: int('auth timeout', 100, 120_000).default(10_000),
  /** Bad frames tolerated on one connection before it is closed (4000). */
  maxBadFrames: int('max bad frames', 1, 10_000).default(32),
  /** Interval of WebSocket pings; a socket that misses one is dropped (half-open connections). */
  heartbeatMs: int('heartbeat', 100, 600_000).default(30_000),
  synchronous: z.enum(['FULL', 'NORMAL']).default('FULL'),
  /** Bearer token for operator commands (`keel-relay tier set`); admin endpoints are off without it. */
  adminToken: z.string().min(24, 'admin token must be at least 24 characters').max(512).optional(),
  /** Tier of users no payment event or operator has set; the free tier unless a deployment says otherwise. */
  defaultTier: TierNameSchema.default('trial'),
  /** JSON file of tier overrides, e.g. {"trial": {"batchWindowMs": 10000}}; DESIGN.md's matrix otherwise. */
  tiersFile: z.string().min(1).optional(),
  logLevel: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
});
export type RelayConfig = z.infer<typeof RelayConfigSchema>;
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
  synchronous: 'KEEL_RELAY_SYNCHRONOUS',
  adminToken: 'KEEL_RELAY_ADMIN_TOKEN',
  tiersFile: 'KEEL_RELAY_TIERS_FILE',
  defaultTier: 'KEEL_RELAY_DEFAULT_TIER',
  logLevel: 'KEEL_RELAY_LOG_LEVEL',
} as const satisfies Record<keyof RelayConfig, string>;
