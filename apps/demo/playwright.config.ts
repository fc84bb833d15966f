import { spawnSync } from 'node:child_process';
import { defineConfig } from '@playwright/test';

/**
 * A free port for the dev server, chosen once in the runner process and inherited by the workers
 * through the environment (each of them loads this file again).
 */
const freePort = (): string => {
  const script = "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{process.stdout.write(String(s.address().port));s.close()})";
  return spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' }).stdout.trim();
};
process.env.KEEL_DEMO_TEST_PORT ??= freePort();
const port = Number(process.env.KEEL_DEMO_TEST_PORT);

export default defineConfig({
  testDir: 'e2e',
  outputDir: 'test-results',
  // Two cores: one browser at a time keeps the relay and the pages from starving each other.
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 60_000,
  expect: { timeout: 10_000 },
  reporter: [['list'], ['json', { outputFile: 'test-results/results.json' }]],
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    screenshot: 'only-on-failure',
    trace: 'off',
    launchOptions: {
      // Debian's chromium; Playwright never downloads a browser here (see TOOLCHAIN.md).
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    },
  },
  webServer: {
    // A real relay on a temporary database (removed on SIGTERM), grace periods of 14 days as in production.
    // The demo is built first, so the tests always run against the current source.
    command: `node node_modules/vite/bin/vite.js build --logLevel warn && node server.mjs --port ${port} --relay-port 0`,
    url: `http://127.0.0.1:${port}/config.json`,
    reuseExistingServer: false,
    timeout: 30_000,
    stdout: 'ignore',
    stderr: 'pipe',
    gracefulShutdown: { signal: 'SIGTERM', timeout: 5_000 },
  },
});
