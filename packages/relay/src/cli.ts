#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { type TierMatrix, TierNameSchema, UserIdSchema, resolveTierMatrix } from '@keel/engine';
import { COMMANDS, COMMANDS_USAGE } from './commands/index.js';
import { ENV_VARS, PriceTiersSchema, type RelayConfig, RelayConfigSchema } from './config.js';
import { type Logger, createJsonLogger } from './log.js';
import { createLogThrottle } from './log-throttle.js';
import { startRelay } from './server/relay-server.js';
import { readTlsCredentials } from './server/tls-credentials.js';
import { openSqliteStore } from './storage/sqlite-store.js';

const USAGE = `usage: keel-relay [serve] [options]
       keel-relay tier set <user-id> <trial|basic|grace_period|premium> [--url <http-url>]
       keel-relay tier get <user-id> [--url <http-url>]
${COMMANDS_USAGE}

serve options:
  --port <n>            port to listen on, 0 for any free port   (${ENV_VARS.port}, default 8787)
  --host <addr>         address to bind                           (${ENV_VARS.host}, default 127.0.0.1)
  --db <path>           SQLite database file                      (${ENV_VARS.db}, default keel-relay.db)
  --relay-id <id>       deployment id devices pin                 (${ENV_VARS.relayId}, default: generated at first
                        start, kept in the database; devices that pinned an id refuse any other)
  --max-payload <bytes> largest frame after authentication      (${ENV_VARS.maxPayloadBytes}, default 1 MiB;
                        larger updates travel in parts)
  --synchronous <mode>  FULL (fsync per commit) or NORMAL         (${ENV_VARS.synchronous}, default FULL)
  --tiers <file>        JSON tier overrides                       (${ENV_VARS.tiersFile})
  --default-tier <tier> tier of users nothing has set yet          (${ENV_VARS.defaultTier}, default trial)
  --price-tiers <file>  JSON price id → "basic" | "premium" map   (${ENV_VARS.priceTiersFile}; inline JSON: ${ENV_VARS.priceTiers})
  --log-level <level>   debug | info | warn | error               (${ENV_VARS.logLevel}, default info)
  --registration <mode> open: anyone may create a user; token: a new user's first device must
                        present a signup token ("signup-token create")  (${ENV_VARS.registration}, default open)
  --tls-cert <file>     PEM certificate chain: serve https:// and wss:// (${ENV_VARS.tlsCert}; needs --tls-key)
  --tls-key <file>      PEM private key of the certificate       (${ENV_VARS.tlsKey});
                        SIGHUP reads both files again (after a renewal) without dropping devices
  --trusted-proxy <ip>  the reverse proxy whose X-Forwarded-For names the client's address for
                        per-address limits (${ENV_VARS.trustedProxy}; ignored from any other peer)
  --alert-url <url>     POST signed operator alerts here          (${ENV_VARS.alertUrl}; needs ${ENV_VARS.alertSecret})
  --metrics-token <t>   bearer token GET /metrics requires        (${ENV_VARS.metricsToken}; prefer the variable:
                        flags show in ps. Without a token /metrics answers only on a loopback-bound relay)
  -h, --help            show this help

environment only: ${ENV_VARS.adminToken} (enables operator commands; also read by "tier"),
  ${ENV_VARS.authTimeoutMs}, ${ENV_VARS.maxBadFrames}, ${ENV_VARS.heartbeatMs}, ${ENV_VARS.snapshotRetentionMs}
  Failed admin logins: 10 a minute per address (IPv6: per /64), 60 a minute in all; past that
  /admin/* answers 429 with Retry-After without checking the token.

bounds on what one connection or user may make the relay hold (environment only):
  ${ENV_VARS.preAuthMaxBytes} (8192: a frame before authentication),
  ${ENV_VARS.maxPendingConnections} (1024 unauthenticated), ${ENV_VARS.maxPendingPerAddress} (256 of them per address),
  ${ENV_VARS.addressConnectBurst} (128 new connections at once per address, then 429), ${ENV_VARS.addressConnectPerSecond} (32/s),
  ${ENV_VARS.maxConnectionsPerUser} (32),
  ${ENV_VARS.maxSubscriptions} (4096 per connection), ${ENV_VARS.maxOutboundBytes} (16 MiB queued to a device
  that does not read, then 4007), ${ENV_VARS.maxDevicesPerUser} (32 live), ${ENV_VARS.maxRegistrationsPerUser} (256),
  ${ENV_VARS.maxEpochsPerUser} (256), ${ENV_VARS.maxPairingsPerDevice} (4 open codes per connection),
  ${ENV_VARS.crisisAnomalyBytes} (16 MiB of crisis lane per user per day: an anomaly, alerted),
  ${ENV_VARS.crisisCeilingBytes} (1 GiB: further crisis envelopes deferred to the next UTC day)

payments (environment only): ${ENV_VARS.webhookSecret} (enables POST /webhooks/payments),
  ${ENV_VARS.webhookToleranceSeconds} (default 300), grace periods in ms: ${ENV_VARS.gracePremiumMs} (14 days),
  ${ENV_VARS.graceBasicMs} (7 days), ${ENV_VARS.graceWindowMs} (90 days), ${ENV_VARS.graceFloorMs} (1 day)

crisis SLA (environment only): ${ENV_VARS.alertSecret} (HMAC key of the keel-signature header on alert
  POSTs), ${ENV_VARS.crisisReceiptTimeoutMs} (5000: a connected device that has not confirmed a crisis
  entry by then raises crisis_receipt_missing). A crisis entry applied more than 200 ms after it reached
  the relay raises crisis_sla_breach; every alert is an error log line and a metric as well.

HTTP timeouts in ms (environment only; a slow client gets 408 and is disconnected):
  ${ENV_VARS.httpHeadersTimeoutMs} (10000), ${ENV_VARS.httpRequestTimeoutMs} (30000; not below
  the other two), ${ENV_VARS.httpBodyTimeoutMs} (10000, admin and webhook bodies)

audit verify: recomputes the audit trail's hash chain; exit 0 when intact, 1 at the first broken row
  (its seq and kind: missing, altered, reordered, unlinked).
  Audited: tier changes, grace periods, webhook deliveries with a valid, fresh signature
  (applied or refused), recovery resets, user exports, imports and deletions; and every sync
  commit, device login, registration and revocation, crisis receipt (and missing receipt),
  crisis anomaly and lane report; failed handshakes, bad frames, refused envelopes and pairing
  steps counted per code every 250 ms. Device and document ids are keyed refs. Not audited:
  webhook deliveries refused before the signature checks (no, bad or stale signature,
  too large, too slow, wrong method, webhooks off) — counted in memory and logged at most once
  per code every 10 s, as are failed admin logins.

audit report: a compliance summary of the window --from ≤ time < --to (ISO date or ms): crisis
  receipts (p50/p99/max, breaches, missing), SLA attainment per tier (--tiers like serve), sync
  operations and bytes per lane, auth failures and refusals by code, anomalies, devices,
  pairing, data-rights operations. Read-only; --json for JSON.

tier options:
  --url <http-url>      the running relay (default http://127.0.0.1:<port or 8787>)
`;

/** Command-line flag of each setting that has one; the rest come from the environment only. */
const FLAGS: Partial<Record<keyof RelayConfig, string>> = {
  port: 'port',
  host: 'host',
  db: 'db',
  relayId: 'relay-id',
  maxPayloadBytes: 'max-payload',
  synchronous: 'synchronous',
  tiersFile: 'tiers',
  defaultTier: 'default-tier',
  priceTiersFile: 'price-tiers',
  logLevel: 'log-level',
  registration: 'registration',
  tlsCert: 'tls-cert',
  tlsKey: 'tls-key',
  trustedProxy: 'trusted-proxy',
  alertUrl: 'alert-url',
  metricsToken: 'metrics-token',
};

/** Exit status for a usage error, as BSD's sysexits EX_USAGE. */
const EX_USAGE = 64;

const usageError = (message: string): never => {
  process.stderr.write(`keel-relay: ${message}\n\n${USAGE}`);
  process.exit(EX_USAGE);
};

const parse = (argv: string[]) => {
  try {
    return parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        port: { type: 'string' },
        host: { type: 'string' },
        db: { type: 'string' },
        'relay-id': { type: 'string' },
        'max-payload': { type: 'string' },
        synchronous: { type: 'string' },
        tiers: { type: 'string' },
        'default-tier': { type: 'string' },
        'price-tiers': { type: 'string' },
        'log-level': { type: 'string' },
        registration: { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'trusted-proxy': { type: 'string' },
        'alert-url': { type: 'string' },
        'metrics-token': { type: 'string' },
        url: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    return usageError(error instanceof Error ? error.message : String(error));
  }
};

const readConfig = (values: Record<string, string | boolean | undefined>): RelayConfig => {
  const input: Record<string, unknown> = {};
  for (const key of Object.keys(ENV_VARS) as (keyof RelayConfig)[]) {
    const flag = FLAGS[key];
    const value = (flag && values[flag]) ?? process.env[ENV_VARS[key]];
    if (typeof value === 'string') input[key] = value;
  }
  const config = RelayConfigSchema.safeParse(input);
  if (!config.success) {
    const problems = config.error.issues.map((issue) => {
      const key = String(issue.path[0]) as keyof RelayConfig;
      const source = FLAGS[key] ? `--${FLAGS[key]} (or ${ENV_VARS[key]})` : (ENV_VARS[key] ?? key);
      return `  ${source}: ${issue.message}`;
    });
    return usageError(`invalid configuration:\n${problems.join('\n')}`);
  }
  return config.data;
};

const readTiers = (path: string | undefined): TierMatrix | undefined => {
  if (path === undefined) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    return usageError(`cannot read tier overrides ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  const matrix = resolveTierMatrix(json);
  if (!matrix.ok) return usageError(`invalid tier overrides in ${path}: ${matrix.error.message}`);
  return matrix.value;
};

/** A price-to-tier map from a file; inline JSON (environment) and a file are not both allowed. */
const readPriceTiers = (config: RelayConfig): RelayConfig => {
  if (config.priceTiersFile === undefined) return config;
  if (Object.keys(config.priceTiers).length > 0) {
    return usageError(`give the price-to-tier map as a file (--price-tiers, ${ENV_VARS.priceTiersFile}) or inline (${ENV_VARS.priceTiers}), not both`);
  }
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(config.priceTiersFile, 'utf8'));
  } catch (error) {
    return usageError(`cannot read price tiers ${config.priceTiersFile}: ${error instanceof Error ? error.message : String(error)}`);
  }
  const parsed = PriceTiersSchema.safeParse(json);
  if (!parsed.success) return usageError(`invalid price tiers in ${config.priceTiersFile}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return { ...config, priceTiers: parsed.data };
};

/** Error text for the log: no stack, and short (V8's JSON.parse messages quote the input). */
const failureMessage = (error: unknown): string => (error instanceof Error ? `${error.name}: ${error.message}` : typeof error).slice(0, 200);

/**
 * Last-resort handlers, the two cases treated differently on purpose. A rejected promise nobody
 * awaited is a bug at the end of one request's or one frame's work: its state is that request's,
 * so the relay logs it and keeps serving everyone else (Node's default would kill every device's
 * connection for one bad request). An exception that unwound to the event loop may have left
 * shared state (maps of connections, queues, timers) half-updated; serving on could corrupt what
 * devices are told, so the relay logs and exits 1. Nothing durable is lost: every commit is a
 * SQLite transaction, grace periods are rescheduled from the database on start, and a supervisor
 * (systemd, Kubernetes) restarts the process.
 */
const watchProcessFailures = (log: Logger): void => {
  // Rate-limited: if a client can trigger the bug, it can trigger it in a loop.
  const throttle = createLogThrottle({ log, now: Date.now });
  process.on('unhandledRejection', (reason: unknown) => {
    throttle.log('process.unhandled_rejection', 'error', 'unhandled promise rejection; relay continues', { error: failureMessage(reason) });
  });
  process.on('uncaughtException', (error: Error) => {
    // stdout to a file or pipe is written synchronously on Linux: the line is out before exit.
    log.log('error', 'uncaught exception; relay exits for its supervisor to restart it', { error: failureMessage(error) });
    process.exit(1);
  });
};

/** The certificate and key parse and fit each other, or the start is a usage error naming the file. */
const checkTls = (config: RelayConfig): void => {
  if (config.tlsCert === undefined || config.tlsKey === undefined) return;
  const loaded = readTlsCredentials(config.tlsCert, config.tlsKey);
  if (!loaded.ok) usageError(loaded.message);
};

const serve = async (input: RelayConfig): Promise<void> => {
  const config = readPriceTiers(input);
  const tiers = readTiers(config.tiersFile);
  checkTls(config);
  const log = createJsonLogger((line) => process.stdout.write(line), config.logLevel);
  watchProcessFailures(log);
  let store;
  try {
    store = openSqliteStore({ path: config.db, synchronous: config.synchronous });
  } catch (error) {
    process.stderr.write(`keel-relay: cannot open database ${config.db}: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  }
  // SIGHUP (systemctl reload) re-reads a renewed certificate. Listened to before the relay
  // starts: the signal's default would stop the process, also while it is still starting.
  let started: Awaited<ReturnType<typeof startRelay>> | undefined;
  process.on('SIGHUP', () => {
    if (config.tlsCert === undefined) log.log('info', 'SIGHUP: nothing to reload without TLS');
    else if (started) started.reloadTls();
    else log.log('info', 'SIGHUP while starting: the certificate is being read anyway');
  });
  const relay = await startRelay(tiers ? { config, store, log, tiers } : { config, store, log });
  started = relay;
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.log('info', 'shutting down', { signal });
    relay.close().then(
      () => process.exit(0),
      (error: unknown) => {
        log.log('error', 'shutdown failed', { error: error instanceof Error ? error.message : String(error) });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
};

/** `tier set|get`: an operator command against a running relay, authenticated by the admin token. */
const tierCommand = async (args: string[], values: Record<string, string | boolean | undefined>): Promise<void> => {
  const [action, user, tier, ...extra] = args;
  if ((action !== 'set' && action !== 'get') || extra.length > 0) return usageError(`unknown tier command "${args.join(' ')}"`);
  const userId = UserIdSchema.safeParse(user);
  if (!userId.success) return usageError(`"${user ?? ''}" is not a Keel user id (u_ + 43 base64url characters)`);
  const tierName = action === 'set' ? TierNameSchema.safeParse(tier) : undefined;
  if (tierName && !tierName.success) return usageError(`"${tier ?? ''}" is not a tier: trial, basic, grace_period or premium`);
  if (action === 'get' && tier !== undefined) return usageError('tier get takes only a user id');
  const token = process.env[ENV_VARS.adminToken];
  if (!token) return usageError(`${ENV_VARS.adminToken} must hold the relay's admin token`);
  const base = typeof values.url === 'string' ? values.url : `http://127.0.0.1:${process.env[ENV_VARS.port] ?? 8787}`;
  let url: URL;
  try {
    url = new URL('/admin/tier', base);
  } catch {
    return usageError(`--url "${base}" is not a URL`);
  }
  if (action === 'get') url.searchParams.set('user', userId.data);
  const response = await fetch(url, {
    method: action === 'set' ? 'POST' : 'GET',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    ...(action === 'set' ? { body: JSON.stringify({ user: userId.data, tier: tierName!.data }) } : {}),
  }).catch((error: unknown) => {
    process.stderr.write(`keel-relay: cannot reach the relay at ${base}: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
  const text = await response.text();
  if (!response.ok) {
    process.stderr.write(`keel-relay: relay answered ${response.status}: ${text}\n`);
    process.exit(1);
  }
  process.stdout.write(`${text}\n`);
};

const main = async (): Promise<void> => {
  const argv = process.argv.slice(2);
  const operatorCommand = argv[0] === undefined ? undefined : COMMANDS[argv[0]];
  if (operatorCommand) {
    process.exitCode = await operatorCommand(argv.slice(1), {
      out: (text) => process.stdout.write(text),
      err: (text) => process.stderr.write(text),
      env: process.env,
      now: Date.now,
    });
    return;
  }
  const parsed = parse(argv);
  if (parsed.values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const [command = 'serve', ...rest] = parsed.positionals;
  if (command === 'tier') return tierCommand(rest, parsed.values);
  if (command !== 'serve' || rest.length > 0) return usageError(`unknown command "${parsed.positionals.join(' ')}"`);
  return serve(readConfig(parsed.values));
};

main().catch((error: unknown) => {
  process.stderr.write(`keel-relay: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
