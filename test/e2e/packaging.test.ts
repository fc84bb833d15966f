import { execFile } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as z from 'zod';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FIXTURES = fileURLToPath(new URL('../fixtures/packaging-app/', import.meta.url));
const TSC = join(ROOT, 'node_modules/.bin/tsc');

/**
 * pnpm and the app run with a clean environment: variables pnpm sets for the vitest run it
 * started (npm_config_*, npm_package_*, PNPM_*) must not make the temporary app look like part
 * of this workspace.
 */
const cleanEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^(npm_|PNPM_|pnpm_)/i.test(key)));

const run = (command: string, args: readonly string[], cwd: string, env: NodeJS.ProcessEnv = cleanEnv(), timeout = 120_000) =>
  new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
    execFile(command, args, { cwd, env, timeout, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(Object.assign(error, { message: `${command} ${args.join(' ')} failed: ${error.message}\n${stdout}\n${stderr}` }));
      else resolve({ stdout, stderr });
    });
  });

const ManifestSchema = z.object({
  name: z.string(),
  version: z.string(),
  exports: z.record(z.string(), z.union([z.string(), z.object({ types: z.string(), default: z.string() })])),
  dependencies: z.record(z.string(), z.string()).optional(),
  peerDependencies: z.record(z.string(), z.string()).optional(),
});

const AppResultSchema = z.object({
  yjsCopies: z.array(z.string()),
  warnings: z.array(z.string()),
  errors: z.array(z.string()),
  sameStateVector: z.boolean(),
  text: z.string(),
  blocks: z.number(),
});

/** The versions the workspace's demo app pins (exactly the lockfile's): the fresh app uses the same. */
const demoPins = (): Record<string, string> => {
  const manifest = z.object({ dependencies: z.record(z.string(), z.string()) }).parse(JSON.parse(readFileSync(join(ROOT, 'apps/demo/package.json'), 'utf8')));
  const wanted = ['yjs', 'lib0', 'y-protocols', 'y-prosemirror', 'prosemirror-model', 'prosemirror-state', 'prosemirror-schema-basic'];
  const pins: Record<string, string> = {};
  for (const name of wanted) {
    const version = manifest.dependencies[name];
    if (!version || !/^\d+\.\d+\.\d+$/.test(version)) throw new Error(`apps/demo pins no exact version of ${name}`);
    pins[name] = version;
  }
  return pins;
};

describe('the packed @keel/engine and @keel/client in an app of their own', () => {
  it('install from their tarballs next to the app’s yjs and y-prosemirror, share one yjs, and sync a ProseMirror document between two devices', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keel-packaging-'));
    scope.defer(() => rmSync(dir, { recursive: true, force: true }));

    // Packed from the build (`tsc -b` runs before the tests): `workspace:` ranges must be rewritten.
    for (const pkg of ['engine', 'client']) await run('pnpm', ['pack', '--pack-destination', dir], join(ROOT, 'packages', pkg));
    const tarballs = readdirSync(dir).filter((name) => name.endsWith('.tgz'));
    const engineTgz = tarballs.find((name) => name.startsWith('keel-engine-'));
    const clientTgz = tarballs.find((name) => name.startsWith('keel-client-'));
    expect(engineTgz && clientTgz, `tarballs: ${tarballs.join(', ')}`).toBeTruthy();

    for (const tgz of [engineTgz!, clientTgz!]) {
      const unpacked = join(dir, tgz.replace(/\.tgz$/, ''));
      await run('mkdir', ['-p', unpacked], dir);
      await run('tar', ['-xzf', join(dir, tgz), '-C', unpacked], dir);
      const text = readFileSync(join(unpacked, 'package/package.json'), 'utf8');
      expect(text, `${tgz} keeps a workspace: range`).not.toContain('workspace:');
      const manifest = ManifestSchema.parse(JSON.parse(text));
      // yjs and lib0 are the app's: peers, never bundled dependencies.
      expect(Object.keys(manifest.dependencies ?? {})).not.toContain('yjs');
      expect(Object.keys(manifest.dependencies ?? {})).not.toContain('lib0');
      expect(manifest.peerDependencies).toHaveProperty('yjs');
      // Every exported file is in the tarball.
      for (const target of Object.values(manifest.exports)) {
        for (const file of typeof target === 'string' ? [target] : [target.types, target.default]) {
          expect(() => readFileSync(join(unpacked, 'package', file)), `${manifest.name} exports ${file}`).not.toThrow();
        }
      }
      rmSync(unpacked, { recursive: true, force: true });
    }

    // A fresh app: the tarballs plus its own yjs, y-prosemirror and ProseMirror, ws for Node. No
    // better-sqlite3: it is an optional peer, and this app keeps its data in memory.
    const pins = demoPins();
    const clientDev = z.object({ devDependencies: z.record(z.string(), z.string()) }).parse(JSON.parse(readFileSync(join(ROOT, 'packages/client/package.json'), 'utf8'))).devDependencies;
    writeFileSync(
      join(dir, 'package.json'),
      JSON.stringify({
        name: 'keel-packaging-app',
        private: true,
        type: 'module',
        dependencies: {
          '@keel/engine': `file:./${engineTgz}`,
          '@keel/client': `file:./${clientTgz}`,
          ws: '8.23.0',
          ...pins,
        },
        // For the type check below: the versions @keel/client builds with.
        devDependencies: { '@types/node': clientDev['@types/node'], '@types/ws': clientDev['@types/ws'] },
      }),
    );
    // @keel/client's `@keel/engine: ^0.7.0` would go to the registry: it is the tarball here.
    writeFileSync(join(dir, 'pnpm-workspace.yaml'), `overrides:\n  '@keel/engine': 'file:./${engineTgz}'\n`);
    // The store already holds every package the workspace installed, so this links rather than downloads.
    await run('pnpm', ['install', '--prefer-offline', '--reporter=append-only'], dir);

    // The declarations resolve through `exports` and type-check strictly in the app.
    for (const file of ['check-types.ts', 'tsconfig.json']) copyFileSync(join(FIXTURES, file), join(dir, file));
    await run(TSC, ['-p', '.'], dir);

    const relay = await scope.relay();
    copyFileSync(join(FIXTURES, 'sync-prosemirror.mjs'), join(dir, 'sync-prosemirror.mjs'));
    const { stdout, stderr } = await run(process.execPath, ['sync-prosemirror.mjs'], dir, { ...cleanEnv(), KEEL_RELAY_URL: relay.url }, 45_000);
    const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
    expect(line, `app output:\n${stdout}\n${stderr}`).toBeDefined();
    const result = AppResultSchema.parse(JSON.parse(line!.slice('RESULT '.length)));

    expect(stderr + stdout).not.toContain('Yjs was already imported');
    expect(result.warnings).toEqual([]);
    expect(result.yjsCopies, 'yjs resolved from @keel/client, @keel/engine, y-prosemirror, y-protocols and the app').toHaveLength(1);
    expect(result.errors).toEqual([]);
    expect(result.sameStateVector).toBe(true);
    // Both devices' edits, merged: A's heading, paragraph and later line, B's added paragraph.
    expect(result.blocks).toBe(4);
    for (const piece of ['Morning. ', 'Today', 'Slept well. Calm.', 'Walked by the river.']) expect(result.text).toContain(piece);
  }, 120_000);
});
