#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { ENV_VARS, type RelayConfig, RelayConfigSchema } from './config.js';
import { createJsonLogger } from './log.js';
import { startRelay } from './server/relay-server.js';
import { openSqliteStore } from './storage/sqlite-store.js';

const USAGE = `usage: keel-relay [serve] [options]

  --port <n>            port to listen on, 0 for any free port   (${ENV_VARS.port}, default 8787)
  --host <addr>         address to bind                           (${ENV_VARS.host}, default 127.0.0.1)
  --db <path>           SQLite database file                      (${ENV_VARS.db}, default keel-relay.db)
  --relay-id <name>     name bound into auth challenges           (${ENV_VARS.relayId}, default keel-relay)
  --max-payload <bytes> largest accepted WebSocket frame          (${ENV_VARS.maxPayloadBytes})
  --synchronous <mode>  FULL (fsync per commit) or NORMAL         (${ENV_VARS.synchronous}, default FULL)
  --log-level <level>   debug | info | warn | error               (${ENV_VARS.logLevel}, default info)
  -h, --help            show this help

environment only: ${ENV_VARS.authTimeoutMs}, ${ENV_VARS.maxBadFrames}, ${ENV_VARS.heartbeatMs}
`;

/** Command-line flag of each setting that has one; the rest come from the environment only. */
const FLAGS: Partial<Record<keyof RelayConfig, string>> = {
  port: 'port',
  host: 'host',
  db: 'db',
  relayId: 'relay-id',
  maxPayloadBytes: 'max-payload',
  synchronous: 'synchronous',
  logLevel: 'log-level',
};

/** Exit status for a usage error, as BSD's sysexits EX_USAGE. */
const EX_USAGE = 64;

const usageError = (message: string): never => {
  process.stderr.write(`keel-relay: ${message}\n\n${USAGE}`);
  process.exit(EX_USAGE);
};

const readConfig = (argv: string[]): RelayConfig => {
  let parsed;
  try {
    parsed = parseArgs({
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
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    return usageError(error instanceof Error ? error.message : String(error));
  }
  if (parsed.values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const [command = 'serve', ...rest] = parsed.positionals;
  if (command !== 'serve' || rest.length > 0) usageError(`unknown command "${parsed.positionals.join(' ')}"`);

  const input: Record<string, unknown> = {};
  for (const key of Object.keys(ENV_VARS) as (keyof RelayConfig)[]) {
    const flag = FLAGS[key];
    const value = (flag && (parsed.values as Record<string, string | boolean | undefined>)[flag]) ?? process.env[ENV_VARS[key]];
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

const main = async (): Promise<void> => {
  const config = readConfig(process.argv.slice(2));
  const log = createJsonLogger((line) => process.stdout.write(line), config.logLevel);
  let store;
  try {
    store = openSqliteStore({ path: config.db, synchronous: config.synchronous });
  } catch (error) {
    process.stderr.write(`keel-relay: cannot open database ${config.db}: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  }
  const relay = await startRelay({ config, store, log });
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

main().catch((error: unknown) => {
  process.stderr.write(`keel-relay: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
