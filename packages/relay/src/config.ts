import { z } from 'zod';

/** Relay configuration: defaults here, overridden by environment, overridden by CLI flags. */
export const RelayConfigSchema = z.strictObject({
  port: z.coerce.number().int('port must be an integer').min(0, 'port must be 0–65535').max(65535, 'port must be 0–65535').default(8787),
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
  maxPayloadBytes: z.coerce.number().int().min(4096).max(256 * 1024 * 1024).default(32 * 1024 * 1024),
  authTimeoutMs: z.coerce.number().int().min(100).max(120_000).default(10_000),
  /** Bad frames tolerated on one connection before it is closed (4000). */
  maxBadFrames: z.coerce.number().int().min(1).max(10_000).default(32),
  synchronous: z.enum(['FULL', 'NORMAL']).default('FULL'),
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
  synchronous: 'KEEL_RELAY_SYNCHRONOUS',
  logLevel: 'KEEL_RELAY_LOG_LEVEL',
} as const satisfies Record<keyof RelayConfig, string>;
