import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as tcpConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type PeerCertificate, connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { type ClientError, type Identity, type KeelClient, createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { createNodeClient } from '@keel/client/node';
import { describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import * as Y from 'yjs';
import { waitFor } from '../support/devices.js';
import { type RelayProcess, logLines, runRelayCli } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

/*
 * Transport security, with real parts only: certificates made by openssl, the relay CLI as a
 * process serving wss:// itself, and Debian's nginx (started on deploy/nginx/keel-relay.conf,
 * the file operators install) terminating TLS in front of a plain relay. Devices are real
 * clients that trust the test's certificate through `tls.ca` only, nothing process-wide.
 */

const scope = useTestScope();

const OPENSSL = '/usr/bin/openssl';
const NGINX_CONF = fileURLToPath(new URL('../../deploy/nginx/keel-relay.conf', import.meta.url));
const NGINX = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx', ...(process.env.PATH ?? '').split(':').map((dir) => join(dir, 'nginx'))].find(
  (path) => path !== 'nginx' && existsSync(path),
);
if (!NGINX) process.stdout.write('tls.test.ts: SKIPPING the nginx tests: no nginx binary found (apt-get install -y nginx-light; `node scripts/run.mjs setup` does it as root)\n');

/** A temp dir removed after the test. */
const tempDir = (prefix: string): string => {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scope.defer(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};

interface Certificate {
  readonly cert: string;
  readonly key: string;
  readonly pem: Buffer;
}

/** A self-signed P-256 certificate for localhost and 127.0.0.1, valid two days. */
const makeCertificate = (dir: string, name = 'relay'): Certificate => {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync(
    OPENSSL,
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
    { stdio: 'ignore' },
  );
  return { cert, key, pem: readFileSync(cert) };
};

/** A port nobody listens on right now (the kernel's pick, released at once). */
const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** One HTTP(S) request, bounded in time; rejects on a network or TLS failure. */
const call = (
  url: string,
  options: { readonly ca?: Buffer; readonly method?: string; readonly headers?: Record<string, string>; readonly body?: Buffer } = {},
): Promise<Answer> =>
  new Promise((resolve, reject) => {
    const target = new URL(url);
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(target, { method: options.method ?? 'GET', headers: options.headers ?? {}, agent: false, timeout: 5_000, ...(options.ca ? { ca: options.ca } : {}) }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(options.body);
  });

interface TlsDevice {
  readonly client: KeelClient;
  readonly errors: ClientError[];
}

/** A real client device on a memory store; `ca` is the only certificate it trusts for the relay. */
const device = async (url: string, identity: Identity, ca: Buffer | undefined): Promise<TlsDevice> => {
  const client = await createNodeClient({ url, identity, storage: createMemoryStore(), backoff: { baseMs: 50, maxMs: 500 }, ...(ca ? { tls: { ca } } : {}) });
  scope.defer(() => client.close());
  const errors: ClientError[] = [];
  client.on('error', (e) => errors.push(e));
  return { client, errors };
};

/** `promise`, or a failure naming `what` after `ms` (a test timeout would not say what hung). */
const within = <T>(promise: Promise<T>, ms: number, what: string): Promise<T> => {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
};

const stateOf = (doc: Y.Doc) => Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64');

/** Two devices of one user edit concurrently through `url` and end byte-for-byte equal. */
const expectConvergence = async (url: string, ca: Buffer) => {
  const identity = await createIdentity();
  const a = await device(url, identity, ca);
  const docA = await a.client.open({ class: 'safety_plan', name: 'plan' });
  await within(a.client.whenSynced(), 10_000, `device A to sync through ${url}`);
  const b = await device(url, await linkNewDevice(identity), ca);
  const docB = await b.client.open({ class: 'safety_plan', name: 'plan' });
  await within(b.client.whenSynced(), 10_000, `device B to sync through ${url}`);
  docA.getText('reasons').insert(0, 'my dog');
  docB.getMap('contacts').set('therapist', '555-0199');
  await Promise.all([a.client.flush(), b.client.flush()]);
  await waitFor(() => stateOf(docA) === stateOf(docB), 10_000, 'convergence over TLS');
  expect(docB.getText('reasons').toString()).toBe('my dog');
  expect(docA.getMap('contacts').get('therapist')).toBe('555-0199');
  expect([...a.errors, ...b.errors]).toEqual([]);
  return { a, b };
};

/** A device that does not trust the certificate never gets past the handshake while one that does syncs. */
const expectUntrustedRefused = async (url: string) => {
  const stranger = await device(url, await createIdentity(), undefined);
  const seen = new Set<string>([stranger.client.status]);
  stranger.client.on('status', (status) => seen.add(status));
  // Several reconnect attempts (backoff 50–500 ms) fit in this window.
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  expect([...seen].filter((s) => s === 'connected' || s === 'synced')).toEqual([]);
};

describe('relay configuration for TLS', () => {
  it('refuses half a TLS configuration, an unreadable file and a key that is not the certificate’s, exit 64 naming the setting', async () => {
    const dir = tempDir('keel-tls-config-');
    const one = makeCertificate(dir, 'one');
    const other = makeCertificate(dir, 'other');
    const db = ['--db', join(dir, 'relay.db'), '--port', '0'];

    const half = await runRelayCli(['serve', ...db, '--tls-cert', one.cert]);
    expect(half.code).toBe(64);
    expect(half.stderr).toContain('--tls-key (or KEEL_RELAY_TLS_KEY): TLS needs both a certificate and its key');

    const missing = await runRelayCli(['serve', ...db, '--tls-cert', join(dir, 'nope.crt'), '--tls-key', one.key]);
    expect(missing.code).toBe(64);
    expect(missing.stderr).toContain('--tls-cert (or KEEL_RELAY_TLS_CERT): TLS certificate');
    expect(missing.stderr).toContain('is not a readable file');

    const mismatched = await runRelayCli(['serve', ...db], { KEEL_RELAY_TLS_CERT: one.cert, KEEL_RELAY_TLS_KEY: other.key });
    expect(mismatched.code).toBe(64);
    expect(mismatched.stderr).toContain(`TLS key ${other.key} does not fit certificate ${one.cert}`);

    const notPem = await runRelayCli(['serve', ...db, '--tls-cert', one.key, '--tls-key', one.key]);
    expect(notPem.code).toBe(64);
    expect(notPem.stderr).toContain('is not a PEM certificate');
    // None of them got as far as creating the database.
    expect(existsSync(join(dir, 'relay.db'))).toBe(false);
  });
});

describe('direct wss:// (--tls-cert, --tls-key)', () => {
  it('serves HTTPS and WSS on one port: two devices converge, health answers over HTTPS, plain HTTP and untrusting clients get nothing', async () => {
    const dir = tempDir('keel-tls-direct-');
    const certificate = makeCertificate(dir);
    const relay = await scope.relay({ args: ['--tls-cert', certificate.cert, '--tls-key', certificate.key] });
    const listening = logLines(relay).find((line) => line.msg === 'listening');
    expect(listening).toMatchObject({ tls: true });
    expect(Date.parse(String(listening?.certificateExpires))).toBeGreaterThan(Date.now());

    const health = await call(`https://localhost:${relay.port}/healthz`, { ca: certificate.pem });
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toMatchObject({ status: 'ok' });
    await expect(call(`http://127.0.0.1:${relay.port}/healthz`)).rejects.toThrow();
    await expect(call(`https://localhost:${relay.port}/healthz`)).rejects.toThrow(/self[- ]signed/);

    const { a } = await expectConvergence(`wss://localhost:${relay.port}`, certificate.pem);
    await expectConvergence(`wss://127.0.0.1:${relay.port}`, certificate.pem);
    await expectUntrustedRefused(`wss://localhost:${relay.port}`);

    // The operator command over HTTPS, trusting the certificate the way docs/deployment.md says.
    const user = a.client.identity.user.userId;
    const env = { KEEL_RELAY_ADMIN_TOKEN: relay.adminToken };
    const tier = await runRelayCli(['tier', 'get', user, '--url', `https://localhost:${relay.port}`], { ...env, NODE_EXTRA_CA_CERTS: certificate.cert });
    expect(tier.stderr).toBe('');
    expect(JSON.parse(tier.stdout)).toMatchObject({ user, tier: 'premium' });
    const untrusted = await runRelayCli(['tier', 'get', user, '--url', `https://localhost:${relay.port}`], env);
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toContain('cannot reach the relay');
  });
});

/** The certificate a new TLS connection to `port` is served, checked against `ca`. */
const servedCertificate = (port: number, ca: Buffer) =>
  new Promise<PeerCertificate>((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const peer = socket.getPeerCertificate();
      socket.end();
      resolve(peer);
    });
    socket.on('error', reject);
  });

describe('certificate renewal (SIGHUP)', () => {
  it('serves a renewed certificate to new connections without dropping open ones, and keeps the old one when the new files are bad', async () => {
    const dir = tempDir('keel-tls-reload-');
    const first = makeCertificate(dir, 'first');
    const second = makeCertificate(dir, 'second');
    const live = { cert: join(dir, 'live.crt'), key: join(dir, 'live.key') };
    copyFileSync(first.cert, live.cert);
    copyFileSync(first.key, live.key);
    const relay = await scope.relay({ args: ['--tls-cert', live.cert, '--tls-key', live.key] });
    const url = `wss://localhost:${relay.port}`;
    // A device that trusts both certificates, so it could reconnect either way; it must not need to.
    const { a } = await expectConvergence(url, Buffer.concat([first.pem, second.pem]));
    const reconnects: string[] = [];
    a.client.on('status', (status) => status === 'connecting' && reconnects.push(status));
    const firstPrint = (await servedCertificate(relay.port, first.pem)).fingerprint256;

    copyFileSync(second.cert, live.cert);
    copyFileSync(second.key, live.key);
    process.kill(relay.pid, 'SIGHUP');
    await waitFor(() => logLines(relay).some((line) => line.msg === 'tls certificate reloaded'), 5_000, 'the reload');
    const secondPrint = (await servedCertificate(relay.port, second.pem)).fingerprint256;
    expect(secondPrint).not.toBe(firstPrint);
    await expect(servedCertificate(relay.port, first.pem)).rejects.toThrow();

    // A key that does not fit: refused, logged, the renewed certificate stays in force.
    copyFileSync(first.key, live.key);
    process.kill(relay.pid, 'SIGHUP');
    await waitFor(() => logLines(relay).some((line) => line.msg === 'tls reload failed; the certificate in force stays'), 5_000, 'the refused reload');
    expect((await servedCertificate(relay.port, second.pem)).fingerprint256).toBe(secondPrint);

    const doc = await a.client.open({ class: 'safety_plan', name: 'plan' });
    doc.getText('reasons').insert(0, 'still here ');
    await within(a.client.flush(), 5_000, 'a flush after the reloads');
    expect(reconnects).toEqual([]);
    expect(a.client.status).toBe('synced');
  });

  it('ignores SIGHUP without TLS instead of stopping', async () => {
    const relay = await scope.relay();
    process.kill(relay.pid, 'SIGHUP');
    await waitFor(() => logLines(relay).some((line) => line.msg === 'SIGHUP: nothing to reload without TLS'), 5_000, 'the SIGHUP log line');
    expect((await call(`${relay.httpUrl}/healthz`)).status).toBe(200);
  });
});

describe('TLS handshake timeout', () => {
  it('drops a socket that never starts its TLS handshake after the headers timeout, and answers 408 to one that handshakes and sends nothing', async () => {
    const dir = tempDir('keel-tls-slow-');
    const certificate = makeCertificate(dir);
    const relay = await scope.relay({
      args: ['--tls-cert', certificate.cert, '--tls-key', certificate.key],
      env: { KEEL_RELAY_HTTP_HEADERS_TIMEOUT_MS: '500', KEEL_RELAY_HTTP_BODY_TIMEOUT_MS: '500' },
    });
    const socket = tcpConnect({ host: '127.0.0.1', port: relay.port });
    scope.defer(() => void socket.destroy());
    const opened = performance.now();
    const closedAfter = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the relay held a silent socket for 5 s')), 5_000);
      socket.on('error', () => undefined);
      socket.on('close', () => {
        clearTimeout(timer);
        resolve(performance.now() - opened);
      });
    });
    // Node's own default would hold it 120 s.
    expect(closedAfter).toBeGreaterThanOrEqual(400);
    expect(closedAfter).toBeLessThan(5_000);

    // After a finished handshake, a client that sends no headers gets the plain relay's 408, over TLS.
    const secure = tlsConnect({ host: '127.0.0.1', port: relay.port, ca: certificate.pem, servername: 'localhost' });
    scope.defer(() => void secure.destroy());
    const answer = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no answer to a silent TLS client within 5 s')), 5_000);
      let text = '';
      secure.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
      secure.on('error', reject);
      secure.on('close', () => {
        clearTimeout(timer);
        resolve(text);
      });
    });
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
  });
});

describe('trusted proxy (--trusted-proxy)', () => {
  /** Failed admin logins from 127.0.0.1 with the given X-Forwarded-For; the statuses in order. */
  const failedLogins = async (relay: RelayProcess, forwardedFor: string, count: number): Promise<number[]> => {
    const statuses: number[] = [];
    for (let i = 0; i < count; i++) {
      const answer = await call(`${relay.httpUrl}/admin/tier?user=u_x`, { headers: { authorization: 'Bearer wrong', 'x-forwarded-for': forwardedFor } });
      statuses.push(answer.status);
    }
    return statuses;
  };

  it('counts failed admin logins by the last X-Forwarded-For entry from that peer only', async () => {
    const trusting = await scope.relay({ args: ['--trusted-proxy', '127.0.0.1'] });
    expect(await failedLogins(trusting, '203.0.113.7', 11)).toEqual([...Array<number>(10).fill(401), 429]);
    // Another client behind the proxy has a budget of its own.
    expect(await failedLogins(trusting, '203.0.113.8', 1)).toEqual([401]);
    // Entries before the last are the client's to forge: the proxy's own (last) entry counts.
    expect(await failedLogins(trusting, '203.0.113.8, 203.0.113.7', 1)).toEqual([429]);
    expect(await failedLogins(trusting, '2001:db8::1', 1)).toEqual([401]);

    // From a peer that is not the trusted proxy the header is ignored: all share the peer's budget.
    const elsewhere = await scope.relay({ args: ['--trusted-proxy', '127.0.0.2'] });
    expect(await failedLogins(elsewhere, '203.0.113.7', 10)).toEqual(Array<number>(10).fill(401));
    expect(await failedLogins(elsewhere, '203.0.113.8', 1)).toEqual([429]);
  });

  /** The HTTP status a WebSocket upgrade from 127.0.0.1 with this X-Forwarded-For gets (101: opened, then closed). */
  const upgrade = (relay: RelayProcess, forwardedFor: string) =>
    new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(relay.url, { headers: { 'x-forwarded-for': forwardedFor } });
      ws.on('open', () => {
        ws.terminate();
        resolve(101);
      });
      ws.on('unexpected-response', (_req, res) => {
        res.resume();
        ws.terminate();
        resolve(res.statusCode ?? 0);
      });
      ws.on('error', reject);
    });

  const LIMITS = { KEEL_RELAY_ADDRESS_CONNECT_BURST: '3', KEEL_RELAY_ADDRESS_CONNECT_PER_SECOND: '1' };

  it('counts new WebSocket connections per forwarded address from that peer only', async () => {
    const trusting = await scope.relay({ args: ['--trusted-proxy', '127.0.0.1'], env: LIMITS });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push(await upgrade(trusting, '203.0.113.7'));
    expect(statuses).toEqual([101, 101, 101, 429]);
    // Another client behind the same proxy is not held back by the first one's flood.
    expect(await upgrade(trusting, '203.0.113.8')).toBe(101);

    const elsewhere = await scope.relay({ args: ['--trusted-proxy', '127.0.0.2'], env: LIMITS });
    const shared: number[] = [];
    for (let i = 0; i < 4; i++) shared.push(await upgrade(elsewhere, `203.0.113.${i}`));
    expect(shared).toEqual([101, 101, 101, 429]);
  });

  it('refuses anything but one IP address', async () => {
    for (const value of ['localhost', '10.0.0.0/8', '127.0.0.1,127.0.0.2', '']) {
      const refused = await runRelayCli(['serve', '--trusted-proxy', value, '--db', ':memory:']);
      expect(refused.code).toBe(64);
      expect(refused.stderr).toContain('--trusted-proxy (or KEEL_RELAY_TRUSTED_PROXY): trusted proxy must be one IPv4 or IPv6 address');
    }
  });
});

/** nginx's temp-path directives for the modules this build has, all pointed into `dir`. */
const tempPathDirectives = (nginx: string, dir: string): string => {
  // nginx -V prints its configure arguments on stderr.
  const built = spawnSync(nginx, ['-V'], { encoding: 'utf8' });
  const version = `${built.stdout}${built.stderr}`;
  return ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
    .filter((module) => module === 'client_body' || !version.includes(`--without-http_${module}_module`))
    .map((module) => `    ${module}_temp_path ${join(dir, `${module}_temp`)};`)
    .join('\n');
};

interface Nginx {
  readonly tlsPort: number;
  readonly httpPort: number;
  readonly dir: string;
}

/**
 * Starts nginx in the foreground on deploy/nginx/keel-relay.conf with only what a test must
 * change replaced (ports, certificate, log paths, the relay's port); every replacement must
 * find its text, so the test always runs the shipped file's directives.
 */
const startNginx = async (nginx: string, relayPort: number, certificate: Certificate, dir: string): Promise<Nginx> => {
  const [tlsPort, httpPort] = [await freePort(), await freePort()];
  let site = readFileSync(NGINX_CONF, 'utf8');
  const substitutions: [string, string][] = [
    ['server 127.0.0.1:8787;', `server 127.0.0.1:${relayPort};`],
    ['listen 80;', `listen 127.0.0.1:${httpPort};`],
    ['listen [::]:80;', ''],
    ['listen 443 ssl;', `listen 127.0.0.1:${tlsPort} ssl;`],
    ['listen [::]:443 ssl;', ''],
    ['/etc/letsencrypt/live/relay.example.org/fullchain.pem', certificate.cert],
    ['/etc/letsencrypt/live/relay.example.org/privkey.pem', certificate.key],
    ['/var/log/nginx/keel-relay.access.log', join(dir, 'access.log')],
    ['/var/log/nginx/keel-relay.error.log', join(dir, 'site-error.log')],
  ];
  for (const [from, to] of substitutions) {
    expect(site, `deploy/nginx/keel-relay.conf no longer contains "${from}"`).toContain(from);
    site = site.replaceAll(from, to);
  }
  writeFileSync(join(dir, 'keel-relay.conf'), site);
  writeFileSync(
    join(dir, 'nginx.conf'),
    [
      'daemon off;',
      // One process, this user's: no workers switching to www-data, no master to outlive the test.
      'master_process off;',
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${join(dir, 'error.log')} info;`,
      'events { worker_connections 64; }',
      'http {',
      tempPathDirectives(nginx, dir),
      `    include ${join(dir, 'keel-relay.conf')};`,
      '}',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(nginx, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  scope.defer(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  });
  const errorLog = () => (existsSync(join(dir, 'error.log')) ? readFileSync(join(dir, 'error.log'), 'utf8') : '');
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nginx exited before listening:\n${output}\n${errorLog()}`);
    const up = await new Promise<boolean>((resolve) => {
      const socket = tlsConnect({ host: '127.0.0.1', port: tlsPort, ca: certificate.pem, servername: 'localhost' }, () => {
        socket.end();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (up) return { tlsPort, httpPort, dir };
    if (Date.now() > deadline) throw new Error(`nginx did not listen within 10 s:\n${output}\n${errorLog()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
};

describe.skipIf(!NGINX)('behind nginx (deploy/nginx/keel-relay.conf)', () => {
  it('terminates TLS for a plain relay: devices converge through wss://, health and limits hold, no address is logged', async () => {
    const dir = tempDir('keel-nginx-');
    const certificate = makeCertificate(dir);
    const relay = await scope.relay({ args: ['--trusted-proxy', '127.0.0.1'] });
    const proxy = await startNginx(NGINX!, relay.port, certificate, dir);
    const front = `https://localhost:${proxy.tlsPort}`;

    // The same relay answers through the proxy.
    const direct = JSON.parse((await call(`${relay.httpUrl}/healthz`)).body) as { relay: string };
    const proxied = await call(`${front}/healthz`, { ca: certificate.pem });
    expect(proxied.status).toBe(200);
    expect(JSON.parse(proxied.body)).toMatchObject({ status: 'ok', relay: direct.relay });
    expect(proxied.headers['strict-transport-security']).toBe('max-age=63072000');

    // Plain HTTP only redirects.
    const redirect = await call(`http://127.0.0.1:${proxy.httpPort}/healthz`, { headers: { host: 'localhost' } });
    expect(redirect.status).toBe(301);
    expect(redirect.headers.location).toBe('https://localhost/healthz');

    await expectConvergence(`wss://localhost:${proxy.tlsPort}`, certificate.pem);
    await expectUntrustedRefused(`wss://localhost:${proxy.tlsPort}`);

    // A body over 256 KiB never reaches the relay.
    const large = await call(`${front}/webhooks/payments`, {
      ca: certificate.pem,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: Buffer.alloc(300 * 1024, 0x20),
    });
    expect(large.status).toBe(413);

    // nginx replaces X-Forwarded-For with the address it saw, so a client cannot pick the
    // address its failed admin logins are counted against: ten from "different" addresses
    // spend one budget.
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++) {
      const answer = await call(`${front}/admin/tier?user=u_x`, {
        ca: certificate.pem,
        headers: { authorization: 'Bearer wrong', 'x-forwarded-for': `198.51.100.${i}` },
      });
      statuses.push(answer.status);
    }
    expect(statuses).toEqual([...Array<number>(10).fill(401), 429]);

    // The access log has requests but no client address.
    const access = readFileSync(join(proxy.dir, 'access.log'), 'utf8');
    expect(access).toContain(' GET /healthz 200 ');
    expect(access).not.toContain('127.0.0.1');
    expect(access).not.toContain('198.51.100.');
    expect(logLines(relay).some((line) => JSON.stringify(line).includes('198.51.100.'))).toBe(false);
  });

  it('keeps the WebSocket open through relay heartbeats and client pings, and carries a crisis edit within its 200 ms SLA', async () => {
    const dir = tempDir('keel-nginx-');
    const certificate = makeCertificate(dir);
    // A 500 ms relay heartbeat: several WebSocket ping/pong rounds pass through nginx meanwhile.
    const relay = await scope.relay({ args: ['--trusted-proxy', '127.0.0.1'], env: { KEEL_RELAY_HEARTBEAT_MS: '500' } });
    const proxy = await startNginx(NGINX!, relay.port, certificate, dir);
    const { a, b } = await expectConvergence(`wss://localhost:${proxy.tlsPort}`, certificate.pem);
    const contactsA = await a.client.open({ class: 'crisis_contacts', name: 'contacts' });
    const contactsB = await b.client.open({ class: 'crisis_contacts', name: 'contacts' });
    await within(Promise.all([a.client.whenSynced(), b.client.whenSynced()]), 10_000, 'both devices to sync the crisis contacts');
    const reconnects: string[] = [];
    a.client.on('status', (status) => status === 'connecting' && reconnects.push('a'));
    b.client.on('status', (status) => status === 'connecting' && reconnects.push('b'));
    // Past several relay heartbeats (500 ms) and client pings (2.5 s): nobody was cut off.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    expect(reconnects).toEqual([]);

    const writtenAt = performance.now();
    contactsA.getMap('people').set('sister', '555-0100');
    await waitFor(() => contactsB.getMap('people').get('sister') === '555-0100', 5_000, 'the crisis edit through nginx');
    // Timing-sensitive on a shared machine; the bound is the product's SLA, not loosened for noise.
    expect(performance.now() - writtenAt).toBeLessThan(200);
    expect([...a.errors, ...b.errors]).toEqual([]);
  });
});

const SYSTEMD_ANALYZE = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((path) => existsSync(path));
if (!SYSTEMD_ANALYZE) process.stdout.write('tls.test.ts: SKIPPING the systemd unit check: no systemd-analyze\n');

describe.skipIf(!SYSTEMD_ANALYZE)('systemd unit (deploy/systemd/keel-relay.service)', () => {
  it('passes systemd-analyze verify and its offline security review scores below 2 (of 10)', () => {
    const unit = fileURLToPath(new URL('../../deploy/systemd/keel-relay.service', import.meta.url));
    const verify = spawnSync(SYSTEMD_ANALYZE!, ['verify', unit], { encoding: 'utf8' });
    // verify reports unknown keys, bad values and a missing executable on stderr, exit 1.
    expect(`${verify.stdout}${verify.stderr}`.trim()).toBe('');
    expect(verify.status).toBe(0);
    const security = spawnSync(SYSTEMD_ANALYZE!, ['security', '--offline=yes', unit], { encoding: 'utf8' });
    const score = /Overall exposure level for keel-relay\.service: (\d+\.\d)/.exec(`${security.stdout}${security.stderr}`);
    expect(score, security.stdout + security.stderr).not.toBeNull();
    expect(Number(score![1])).toBeLessThan(2);
  });
});
