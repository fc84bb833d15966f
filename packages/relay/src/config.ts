import { type RelayId, RelayIdSchema, TierNameSchema } from '@keel/engine';
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
  /** Largest WebSocket frame accepted; bigger frames close the socket with 1009. */
  maxPayloadBytes: int('max payload', 4096, 256 * 1024 * 1024).default(32 * 1024 * 1024),
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
  /** Tier of users no payment event or operator has set; the free tier unless a deployment says otherwise. */
  defaultTier: TierNameSchema.default('trial'),
  /** JSON file of tier overrides, e.g. {"trial": {"batchWindowMs": 10000}}; DESIGN.md's matrix otherwise. */
  tiersFile: z.string().min(1).optional(),
  logLevel: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  /** Payment webhook endpoint secret (Stripe's `whsec_…`); POST /webhooks/payments answers 503 without it. */
  webhookSecret: z.string().min(16, 'webhook secret must be at least 16 characters').max(512).optional(),
  /** How far a webhook signature's timestamp may be from the relay's clock (s); Stripe's default 300. */
  webhookToleranceSeconds: int('webhook tolerance', 1, 86_400).default(300),
  /** Inline JSON price-to-tier map (environment); see `priceTiersFile` for a file. */
  priceTiers: jsonText(PriceTiersSchema).default({}),
  /** JSON file with the price-to-tier map. */
  priceTiersFile: z.string().min(1).optional(),
  /** First grace period of a premium user (ms); DESIGN.md: 14 days. */
  gracePremiumMs: int('premium grace period', 1, YEAR_MS).default(14 * DAY_MS),
  /** First grace period of a basic user (ms): 7 days. */
  graceBasicMs: int('basic grace period', 1, YEAR_MS).default(7 * DAY_MS),
  /** Failures this far back shorten the next grace period (ms): 90 days. */
  graceWindowMs: int('grace failure window', 0, 10 * YEAR_MS).default(90 * DAY_MS),
  /** Shortest grace period after repeated failures (ms): 1 day. */
  graceFloorMs: int('grace floor', 1, YEAR_MS).default(DAY_MS),
}).superRefine((config, ctx) => {
  // Otherwise the floor would lengthen a first grace period beyond its configured base.
  if (config.graceFloorMs > Math.min(config.graceBasicMs, config.gracePremiumMs)) {
    ctx.addIssue({ code: 'custom', path: ['graceFloorMs'], message: 'grace floor must not be longer than the basic or premium grace period' });
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
  tiersFile: 'KEEL_RELAY_TIERS_FILE',
  defaultTier: 'KEEL_RELAY_DEFAULT_TIER',
  logLevel: 'KEEL_RELAY_LOG_LEVEL',
  webhookSecret: 'KEEL_RELAY_WEBHOOK_SECRET',
  webhookToleranceSeconds: 'KEEL_RELAY_WEBHOOK_TOLERANCE_S',
  priceTiers: 'KEEL_RELAY_PRICE_TIERS',
  priceTiersFile: 'KEEL_RELAY_PRICE_TIERS_FILE',
  gracePremiumMs: 'KEEL_RELAY_GRACE_PREMIUM_MS',
  graceBasicMs: 'KEEL_RELAY_GRACE_BASIC_MS',
  graceWindowMs: 'KEEL_RELAY_GRACE_WINDOW_MS',
  graceFloorMs: 'KEEL_RELAY_GRACE_FLOOR_MS',
} as const satisfies Record<keyof RelayConfig, string>;
