#!/usr/bin/env node
// The two commands of the README, on a machine that has only Node and npm:
//   npm start  → set up, build, run the relay on an embedded SQLite database and serve the demo
//                (npm start -- --relay-only: the relay alone)
//   npm test   → set up, typecheck, lint, run every test (vitest, then Playwright in Chromium),
//                print one summary line
// Setup is idempotent and quick when everything is already there.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PNPM_VERSION = '12.4.2';
const LOCAL_TOOLS = join(ROOT, '.tools');

const say = (message) => process.stdout.write(`\u001b[1m[keel]\u001b[0m ${message}\n`);

const run = (command, args, options = {}) => {
  const result = spawnSync(command, args, { cwd: ROOT, stdio: 'inherit', ...options });
  if (result.error) throw result.error;
  return result.status ?? 1;
};
const must = (command, args, options) => {
  const status = run(command, args, options);
  if (status !== 0) {
    say(`failed: ${command} ${args.join(' ')} (exit ${status})`);
    process.exit(status);
  }
};
const versionOf = (command) => {
  const result = spawnSync(command, ['--version'], { encoding: 'utf8' });
  return result.status === 0 ? result.stdout.trim() : undefined;
};

const checkNode = () => {
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major < 20 || (major === 20 && minor < 19)) {
    say(`Node ${process.versions.node} is too old: Keel needs Node ≥ 20.19`);
    process.exit(1);
  }
};

/** pnpm at exactly the pinned version: the global one, else a project-local install. */
const ensurePnpm = () => {
  if (versionOf('pnpm') === PNPM_VERSION) return 'pnpm';
  const local = join(LOCAL_TOOLS, 'node_modules', '.bin', 'pnpm');
  if (existsSync(local) && versionOf(local) === PNPM_VERSION) return local;
  say(`installing pnpm ${PNPM_VERSION}`);
  if (run('npm', ['install', '-g', '-E', `pnpm@${PNPM_VERSION}`], { stdio: 'ignore' }) === 0 && versionOf('pnpm') === PNPM_VERSION) {
    return 'pnpm';
  }
  mkdirSync(LOCAL_TOOLS, { recursive: true });
  must('npm', ['install', '--prefix', LOCAL_TOOLS, '--no-save', '-E', `pnpm@${PNPM_VERSION}`]);
  return local;
};

const installDependencies = (pnpm) => {
  say('installing dependencies (frozen lockfile)');
  must(pnpm, ['install', '--frozen-lockfile', '--reporter=append-only'], { env: { ...process.env, CI: 'true' } });
};

const build = (pnpm) => {
  say('building (tsc -b, strict typecheck)');
  must(pnpm, ['exec', 'tsc', '-b']);
};

const CHROMIUM = '/usr/bin/chromium';
/** The browser tests drive Debian's chromium (Playwright never downloads one); installed when missing. */
const ensureChromium = () => {
  if (existsSync(CHROMIUM)) return;
  if (process.getuid?.() !== 0) {
    say(`the browser tests need ${CHROMIUM}: run "apt-get install -y chromium" as root`);
    return;
  }
  say('installing Debian chromium for the browser tests (apt-get)');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  if (run('apt-get', ['update'], { env }) !== 0 || run('apt-get', ['install', '-y', 'chromium'], { env }) !== 0 || !existsSync(CHROMIUM)) {
    say(`could not install chromium: install it (apt-get install -y chromium) for the browser tests`);
  }
};

/**
 * test/e2e/tls.test.ts starts Debian's nginx in front of a relay (deploy/nginx/keel-relay.conf);
 * nginx-light is installed when no nginx is there. The package's service is never started: the
 * test runs its own nginx in the foreground on loopback ports.
 */
const NGINX = ['/usr/sbin/nginx', '/usr/local/sbin/nginx'];
const ensureNginx = () => {
  if (NGINX.some((path) => existsSync(path))) return;
  if (process.getuid?.() !== 0) {
    say('the nginx test (test/e2e/tls.test.ts) needs nginx: run "apt-get install -y nginx-light" as root; it is skipped until then');
    return;
  }
  say('installing Debian nginx-light for the reverse-proxy test (apt-get)');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => run('apt-get', ['install', '-y', '--no-install-recommends', 'nginx-light'], { env });
  if ((install() !== 0 && (run('apt-get', ['update'], { env }) !== 0 || install() !== 0)) || !NGINX.some((path) => existsSync(path))) {
    say('could not install nginx-light: install it (apt-get install -y nginx-light) for the reverse-proxy test');
    return;
  }
  // On a systemd host the package starts its service on port 80; this machine installed it for
  // the test only, so the service goes off again (the test runs its own nginx).
  if (existsSync('/run/systemd/system')) run('systemctl', ['disable', '--now', 'nginx'], { stdio: 'ignore' });
};

const DEMO = join(ROOT, 'apps/demo');
const buildDemo = (pnpm) => {
  say('building the demo (vite build)');
  must(pnpm, ['exec', 'vite', 'build', '--logLevel', 'warn'], { cwd: DEMO });
};

/**
 * Runs a long-lived server in the foreground: SIGTERM / SIGINT sent to this script reach it (so
 * it can clean up its relay and temporary files), and its exit status becomes ours.
 */
const serve = (args) => {
  const child = spawn(process.execPath, args, { cwd: ROOT, stdio: 'inherit' });
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => child.kill(signal));
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
};

/**
 * The relay (embedded SQLite in data/, kept between runs) and the demo served beside it; the
 * dev server prints the URL to open. `--relay-only` runs the bare relay, any other flags go to it.
 */
const start = (pnpm) => {
  const dataDir = join(ROOT, 'data');
  mkdirSync(dataDir, { recursive: true });
  const db = process.env.KEEL_RELAY_DB ?? join(dataDir, 'keel-relay.db');
  const extra = process.argv.slice(3);
  if (extra.includes('--relay-only')) {
    say(`starting the relay on ${process.env.KEEL_RELAY_HOST ?? '127.0.0.1'}:${process.env.KEEL_RELAY_PORT ?? 8787}, database ${db}`);
    say('health: GET /healthz · stop with Ctrl-C');
    const args = [join(ROOT, 'packages/relay/dist/cli.js'), 'serve', '--db', db, ...extra.filter((a) => a !== '--relay-only')];
    return serve(args);
  }
  buildDemo(pnpm);
  say(`starting the relay (database ${db}) and the demo`);
  const port = process.env.KEEL_DEMO_PORT ?? '4173';
  const relayPort = process.env.KEEL_RELAY_PORT ?? '8787';
  serve([join(DEMO, 'server.mjs'), '--port', port, '--relay-port', relayPort, '--db', db, ...extra]);
};

/** The browser tests (Playwright, Debian's chromium, against the real relay); their counts from its JSON report. */
const playwrightSet = (pnpm) => {
  const results = join(DEMO, 'test-results', 'results.json');
  rmSync(results, { force: true });
  const status = run(pnpm, ['exec', 'playwright', 'test'], { cwd: DEMO });
  if (!existsSync(results)) return { status, results: undefined };
  const { stats } = JSON.parse(readFileSync(results, 'utf8'));
  const passed = stats.expected + stats.flaky;
  return {
    status,
    results: { numPassedTests: passed, numFailedTests: stats.unexpected, numPendingTests: stats.skipped, numTodoTests: 0, numTotalTests: passed + stats.unexpected + stats.skipped },
  };
};

/** Runs one vitest set, writing its JSON results; returns the exit status and the parsed results. */
const vitestSet = (pnpm, name, env) => {
  const results = join(ROOT, `.vitest-results-${name}.json`);
  rmSync(results, { force: true });
  const status = run(pnpm, ['exec', 'vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile=${results}`], {
    env: { ...process.env, ...env },
  });
  return { status, results: existsSync(results) ? JSON.parse(readFileSync(results, 'utf8')) : undefined };
};

const test = (pnpm) => {
  say('linting (oxlint: no import cycles, no unused code)');
  must(pnpm, ['run', '-s', 'lint']);
  say('running the unit, property and end-to-end tests (vitest, files in parallel)');
  const main = vitestSet(pnpm, 'main', {});
  // Attack tests load a relay to its limits while timing an honest user's crisis edits: they run
  // after the rest, one file at a time, so no other test shares the two cores with them.
  say('running the attack tests (vitest, one file at a time)');
  const attacks = vitestSet(pnpm, 'attacks', { KEEL_TEST_SET: 'attacks' });
  say('running the browser tests (Playwright: the demo in Chromium, two contexts = two devices)');
  const browser = playwrightSet(pnpm);
  const sets = [main, attacks, browser];
  const sum = (key) => sets.reduce((n, set) => n + (set.results?.[key] ?? 0), 0);
  const missing = sets.some((set) => !set.results);
  // The reason a set wrote no results is above in its own output.
  const skipped = sum('numPendingTests') + sum('numTodoTests');
  const summary = missing
    ? 'a test set (vitest or Playwright) wrote no results'
    : `${sum('numPassedTests')} passed, ${sum('numFailedTests')} failed${skipped ? `, ${skipped} skipped` : ''}`;
  if (!missing && sets.some((set) => set.results.numTotalTests === 0)) {
    say('a test set ran no test');
    process.exit(1);
  }
  process.stdout.write(`\n${summary}\n`);
  process.exit(sets.find((set) => set.status !== 0)?.status ?? (missing ? 1 : 0));
};

/** Benchmarks: the driver on CPU 1, the relay (which pins itself) on CPU 0. */
const bench = (pnpm) => {
  const pin = versionOf('taskset') !== undefined || existsSync('/usr/bin/taskset') ? ['taskset', '-c', '1'] : [];
  const [cmd, ...args] = [...pin, pnpm, '--filter', '@keel/test', 'run', '-s', 'bench'];
  process.exit(run(cmd, args));
};

const command = process.argv[2];
if (!['start', 'test', 'setup', 'bench'].includes(command)) {
  say('usage: node scripts/run.mjs start|test|bench|setup');
  process.exit(64);
}
checkNode();
const pnpm = ensurePnpm();
installDependencies(pnpm);
if (command === 'setup' || command === 'test') {
  ensureChromium();
  ensureNginx();
}
build(pnpm);
if (command === 'start') start(pnpm);
else if (command === 'test') test(pnpm);
else if (command === 'bench') bench(pnpm);
