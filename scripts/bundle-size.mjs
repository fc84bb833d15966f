#!/usr/bin/env node
// Measures what a minimal browser app pays for Keel: a Vite production build of an app that
// creates an identity, calls createBrowserClient and opens one document, from the built
// packages (`tsc -b` first), through their `exports`, with the demo app's Vite. Prints the
// bundle's JavaScript size raw and gzipped, and fails when a Node built-in (node:fs, ws,
// better-sqlite3, …) is pulled into the browser build.
//
//   node scripts/bundle-size.mjs          human-readable
//   node scripts/bundle-size.mjs --json   one JSON line (test/e2e/bundle.test.ts reads it)
//   … --entry node                        bundles @keel/client/node instead (a control: it must be caught)
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DEMO = join(ROOT, 'apps/demo');
const demoRequire = createRequire(join(DEMO, 'package.json'));
const { build } = await import(pathToFileURL(demoRequire.resolve('vite')).href);

const ENTRY = `
import { createIdentity } from '@keel/client';
import { createBrowserClient } from '@keel/client/browser';

const identity = await createIdentity();
const client = await createBrowserClient({ name: 'app', url: 'wss://relay.example.org', identity });
const doc = await client.open({ class: 'safety_plan', name: 'plan' });
doc.getText('reasons').insert(0, 'my sister');
document.body.textContent = client.status;
`;

/** The control: the Node entry, which must be reported for pulling in ws, better-sqlite3 and node:*. */
const NODE_ENTRY = `
import { createIdentity } from '@keel/client';
import { createNodeClient } from '@keel/client/node';

const identity = await createIdentity();
const client = await createNodeClient({ url: 'wss://relay.example.org', identity, sqlitePath: 'device.db' });
await client.open({ class: 'safety_plan', name: 'plan' });
`;

/** Node-only modules that must never reach a browser bundle. */
const NODE_ONLY = new Set(['ws', 'better-sqlite3', ...builtinModules]);
/**
 * Known and harmless: libsodium's Emscripten glue falls back to `require("crypto")` inside a
 * try/catch only when WebCrypto's getRandomValues is missing (never in a browser that runs Keel).
 * The bundler leaves it external; it is listed, not counted as a leak.
 */
const GUARDED_FALLBACKS = [{ module: 'crypto', importer: /[\\/]libsodium[\\/]/ }];

const measure = async () => {
  const dir = mkdtempSync(join(tmpdir(), 'keel-bundle-'));
  const offenders = new Set();
  const fallbacks = new Set();
  try {
    writeFileSync(join(dir, 'index.html'), '<!doctype html><html><body><script type="module" src="./main.js"></script></body></html>');
    writeFileSync(join(dir, 'main.js'), process.argv.includes('node') ? NODE_ENTRY : ENTRY);
    await build({
      root: dir,
      logLevel: 'silent',
      configFile: false,
      build: { outDir: join(dir, 'dist'), emptyOutDir: true, target: 'es2022', chunkSizeWarningLimit: 4096 },
      plugins: [
        {
          name: 'keel-resolve-like-an-app',
          enforce: 'pre',
          // The entry sits in a temp dir: @keel/* resolve as the demo app (a workspace app) resolves them.
          async resolveId(source, importer, options) {
            const bare = source.startsWith('node:') ? source.slice(5) : source;
            if (NODE_ONLY.has(bare) || NODE_ONLY.has(bare.split('/')[0])) {
              const known = GUARDED_FALLBACKS.some((f) => f.module === bare && f.importer.test(importer ?? ''));
              (known ? fallbacks : offenders).add(`${source} (imported by ${importer ?? '?'})`);
              return { id: source, external: true };
            }
            if (source.startsWith('@keel/')) return this.resolve(source, join(DEMO, 'index.html'), { ...options, skipSelf: true });
            return null;
          },
        },
      ],
    });
    const assets = join(dir, 'dist/assets');
    const js = readdirSync(assets).filter((f) => f.endsWith('.js'));
    let raw = 0;
    let gzip = 0;
    for (const file of js) {
      const bytes = readFileSync(join(assets, file));
      raw += bytes.length;
      gzip += gzipSync(bytes, { level: 9 }).length;
    }
    return { files: js.length, rawBytes: raw, gzipBytes: gzip, nodeBuiltins: [...offenders], guardedFallbacks: [...fallbacks] };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

const result = await measure();
if (process.argv.includes('--json')) {
  console.log(JSON.stringify(result));
} else {
  const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
  console.log(`minimal browser app (createBrowserClient + open one document), Vite production build:`);
  console.log(`  ${result.files} JavaScript file(s): ${kb(result.rawBytes)} raw, ${kb(result.gzipBytes)} gzipped (level 9)`);
  if (result.nodeBuiltins.length > 0) console.log(`  Node-only modules pulled in: ${result.nodeBuiltins.join(', ')}`);
  else console.log('  no Node-only module pulled in');
  for (const f of result.guardedFallbacks) console.log(`  left external (guarded fallback, never reached in a browser): ${f}`);
}
process.exitCode = result.nodeBuiltins.length > 0 ? 1 : 0;
