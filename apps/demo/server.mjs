#!/usr/bin/env node
// The demo's dev server: runs a real Keel relay (the built CLI, embedded SQLite), serves the built
// demo on 127.0.0.1, tells the page where the relay is (GET /config.json), and signs test payment
// webhooks for it (POST /dev/webhook): the signing secret stays in this process, never in the page.
//
//   node apps/demo/server.mjs [--port 4173] [--relay-port 8787] [--db <file>] [--relay-only]
//
// Without --db the relay's database lives in a temporary directory that is removed on exit.
// SIGTERM / SIGINT stop the relay, wait for it, remove temporary files and exit.
import { spawn } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as z from 'zod';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const DIST = join(HERE, 'dist');
const RELAY_CLI = fileURLToPath(new URL('../../packages/relay/dist/cli.js', import.meta.url));

const say = (message) => process.stdout.write(`\u001b[1m[keel demo]\u001b[0m ${message}\n`);

const PortSchema = z.coerce.number().int().min(0).max(65_535);
const OptionsSchema = z.strictObject({
  port: PortSchema.default(4173),
  relayPort: PortSchema.default(8787),
  db: z.string().min(1).optional(),
  relayOnly: z.boolean().default(false),
  /** Grace period lengths for the dev relay (ms); short ones let a tester watch one end. */
  gracePremiumMs: z.coerce.number().int().min(1_000).optional(),
});

const readOptions = () => {
  const { values } = parseArgs({
    strict: true,
    options: {
      port: { type: 'string' },
      'relay-port': { type: 'string' },
      db: { type: 'string' },
      'relay-only': { type: 'boolean' },
      'grace-premium-ms': { type: 'string' },
    },
  });
  const parsed = OptionsSchema.safeParse({
    port: values.port ?? process.env.KEEL_DEMO_PORT,
    relayPort: values['relay-port'] ?? process.env.KEEL_DEMO_RELAY_PORT,
    db: values.db ?? process.env.KEEL_DEMO_DB,
    relayOnly: values['relay-only'] ?? process.env.KEEL_DEMO_RELAY_ONLY === '1',
    gracePremiumMs: values['grace-premium-ms'] ?? process.env.KEEL_DEMO_GRACE_PREMIUM_MS,
  });
  if (!parsed.success) {
    process.stderr.write(`keel demo: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}\n`);
    process.exit(64);
  }
  return parsed.data;
};

/** The prices the dev relay maps to tiers; the dev webhooks name them. */
const PRICE_TIERS = { price_keel_basic: 'basic', price_keel_premium: 'premium' };

/** Starts the relay CLI and resolves once it logged the port it listens on. */
const startRelay = ({ relayPort, dbPath, secret, gracePremiumMs }) =>
  new Promise((resolvePromise, reject) => {
    const child = spawn(
      process.execPath,
      // Users nothing has paid for start on trial: the demo shows what the free tier does.
      [RELAY_CLI, 'serve', '--host', '127.0.0.1', '--port', String(relayPort), '--db', dbPath, '--default-tier', 'trial'],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: {
          ...process.env,
          KEEL_RELAY_WEBHOOK_SECRET: secret,
          KEEL_RELAY_PRICE_TIERS: JSON.stringify(PRICE_TIERS),
          ...(gracePremiumMs ? { KEEL_RELAY_GRACE_PREMIUM_MS: String(gracePremiumMs) } : {}),
        },
      },
    );
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the relay did not start within 15 s:\n${out}`));
    }, 15_000);
    const onData = (chunk) => {
      out += chunk;
      // Keep only what the port search needs; the relay's log goes on to our stdout.
      if (out.length > 64 * 1024) out = out.slice(-16 * 1024);
      const match = /"msg":"listening"[^\n]*"port":(\d+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        resolvePromise({ child, port: Number(match[1]) });
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    if (process.env.KEEL_DEMO_RELAY_LOG === '1') child.stdout.pipe(process.stdout);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the relay exited with ${code} before listening:\n${out}`));
    });
  });

// ── test payment webhooks ────────────────────────────────────────────────────────────────────
const DevWebhookSchema = z.strictObject({
  event: z.enum(['upgrade', 'payment_failed', 'recovered', 'expired']),
  /** The Keel user id the subscription belongs to (Stripe carries it in the subscription's metadata). */
  user: z.string().min(1).max(200).regex(/^[A-Za-z0-9_-]+$/),
});

let eventCounter = 0;
/** A Stripe-shaped event: only ids, status and price are read by the relay; no PII. */
const stripeEvent = (type, object) => ({
  id: `evt_dev_${Date.now().toString(36)}_${(++eventCounter).toString(36)}`,
  object: 'event',
  api_version: '2025-03-31.basil',
  created: Math.floor(Date.now() / 1000),
  livemode: false,
  type,
  data: { object },
});
// Stripe ids are letters, digits and _: a digest of the user id names the user's one subscription.
const subscriptionId = (user) => `sub_dev_${createHash('sha256').update(user).digest('hex').slice(0, 24)}`;
const subscription = (user, status) => ({
  id: subscriptionId(user),
  object: 'subscription',
  customer: 'cus_dev',
  status,
  metadata: { keel_user: user },
  items: { object: 'list', data: [{ id: 'si_dev', object: 'subscription_item', price: { id: 'price_keel_premium', object: 'price' }, quantity: 1 }] },
});
const invoice = (user, paid) => ({
  id: `in_dev_${randomBytes(6).toString('hex')}`,
  object: 'invoice',
  customer: 'cus_dev',
  status: paid ? 'paid' : 'open',
  parent: { type: 'subscription_details', subscription_details: { subscription: subscriptionId(user), metadata: {} } },
});

const eventFor = ({ event, user }) => {
  switch (event) {
    case 'upgrade':
      return stripeEvent('customer.subscription.updated', subscription(user, 'active'));
    case 'payment_failed':
      return stripeEvent('invoice.payment_failed', invoice(user, false));
    case 'recovered':
      return stripeEvent('invoice.paid', invoice(user, true));
    case 'expired':
      return stripeEvent('customer.subscription.deleted', subscription(user, 'canceled'));
  }
  throw new Error(`unhandled dev webhook ${event}`);
};

/** Stripe's scheme: `t=<unix s>,v1=HMAC-SHA256(secret, "<t>.<raw body>")`. */
const signStripe = (payload, secret) => {
  const t = Math.floor(Date.now() / 1000);
  const v1 = createHmac('sha256', secret).update(`${t}.${payload}`).digest('hex');
  return `t=${t},v1=${v1}`;
};

// ── HTTP ─────────────────────────────────────────────────────────────────────────────────────
const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.wasm': 'application/wasm',
  '.webmanifest': 'application/manifest+json',
};
const MAX_BODY = 4 * 1024;

const sendJson = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
};

/**
 * The body, at most MAX_BODY bytes. A larger one is read to its end without being kept (so the
 * client can read the 413) up to DRAIN_LIMIT, past which the connection is cut.
 */
const DRAIN_LIMIT = 1024 * 1024;
const readBody = (req) =>
  new Promise((resolvePromise, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY) chunks.push(chunk);
      else if (size > DRAIN_LIMIT) req.destroy();
    });
    req.on('end', () => (size > MAX_BODY ? reject(Object.assign(new Error('body too large'), { status: 413 })) : resolvePromise(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });

const serveFile = (req, res) => {
  const url = new URL(req.url ?? '/', 'http://127.0.0.1');
  const wanted = normalize(decodeURIComponent(url.pathname)).replace(/^([/\\])+/, '');
  let file = resolve(DIST, wanted || 'index.html');
  if (file !== DIST && !file.startsWith(DIST + sep)) return sendJson(res, 403, { error: 'FORBIDDEN' });
  if (!existsSync(file) || statSync(file).isDirectory()) file = join(DIST, 'index.html');
  if (!existsSync(file)) return sendJson(res, 503, { error: 'NOT_BUILT', message: 'run vite build in apps/demo first (npm start does it)' });
  // Hashed assets never change; the shell and the service worker must be revalidated.
  const immutable = wanted.startsWith('assets/');
  res.writeHead(200, {
    'content-type': MIME[extname(file)] ?? 'application/octet-stream',
    'cache-control': immutable ? 'public, max-age=31536000, immutable' : 'no-cache',
    'x-content-type-options': 'nosniff',
  });
  res.end(readFileSync(file));
};

const main = async () => {
  const options = readOptions();
  const tempDir = options.db ? undefined : mkdtempSync(join(tmpdir(), 'keel-demo-'));
  const dbPath = options.db ?? join(tempDir, 'relay.db');
  const secret = `whsec_dev_${randomBytes(24).toString('hex')}`;
  let relay;
  let server;
  let stopping = false;
  const stop = async (code = 0) => {
    if (stopping) return;
    stopping = true;
    server?.closeAllConnections?.();
    server?.close();
    if (relay && relay.child.exitCode === null) {
      const exited = new Promise((r) => relay.child.once('exit', r));
      relay.child.kill('SIGTERM');
      const timer = setTimeout(() => relay.child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    if (tempDir) rmSync(tempDir, { recursive: true, force: true });
    process.exit(code);
  };
  process.on('SIGTERM', () => void stop(0));
  process.on('SIGINT', () => void stop(0));

  try {
    relay = await startRelay({ relayPort: options.relayPort, dbPath, secret, gracePremiumMs: options.gracePremiumMs });
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    return stop(1);
  }
  relay.child.once('exit', (code) => {
    if (!stopping) {
      say(`the relay exited (${code}); stopping`);
      void stop(1);
    }
  });
  const relayUrl = `ws://127.0.0.1:${relay.port}`;
  const relayHttp = `http://127.0.0.1:${relay.port}`;
  say(`relay: ${relayUrl}  (database ${tempDir ? `temporary in ${tempDir}, removed on exit` : dbPath})`);
  if (options.relayOnly) {
    say('relay only (--relay-only); stop with Ctrl-C');
    return;
  }

  server = createServer(async (req, res) => {
    try {
      const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
      if (path === '/config.json' && req.method === 'GET') {
        return sendJson(res, 200, { relayUrl, dev: true, defaultTier: 'trial' });
      }
      if (path === '/dev/webhook') {
        if (req.method !== 'POST') return sendJson(res, 405, { error: 'METHOD_NOT_ALLOWED' });
        // Only the demo's own page: another site could otherwise post a "simple" cross-origin
        // form here. JSON forces a CORS preflight (never allowed), and a foreign Origin is refused.
        const origin = req.headers.origin;
        if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) return sendJson(res, 415, { error: 'UNSUPPORTED_MEDIA_TYPE' });
        if (origin !== undefined && origin !== `http://${req.headers.host}`) return sendJson(res, 403, { error: 'FOREIGN_ORIGIN' });
        let input;
        try {
          input = DevWebhookSchema.safeParse(JSON.parse(await readBody(req)));
        } catch (error) {
          return sendJson(res, error?.status ?? 400, { error: error?.status === 413 ? 'TOO_LARGE' : 'BAD_JSON' });
        }
        if (!input.success) return sendJson(res, 400, { error: 'SCHEMA', message: input.error.issues[0]?.message ?? 'invalid' });
        const payload = JSON.stringify(eventFor(input.data));
        const reply = await fetch(`${relayHttp}/webhooks/payments`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'stripe-signature': signStripe(payload, secret) },
          body: payload,
          signal: AbortSignal.timeout(5_000),
        });
        return sendJson(res, reply.status, await reply.json().catch(() => ({ error: 'RELAY_REPLY_NOT_JSON' })));
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') return sendJson(res, 405, { error: 'METHOD_NOT_ALLOWED' });
      return serveFile(req, res);
    } catch (error) {
      if (!res.headersSent) sendJson(res, 500, { error: 'INTERNAL', message: error instanceof Error ? error.message : String(error) });
      else res.destroy();
    }
  });
  server.listen(options.port, '127.0.0.1', () => {
    const { port } = server.address();
    say(`open http://127.0.0.1:${port}/  (stop with Ctrl-C)`);
  });
};

void main();
