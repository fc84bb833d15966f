import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (pkg: string, entry = 'index') =>
  fileURLToPath(new URL(`./packages/${pkg}/src/${entry}.ts`, import.meta.url));

export default defineConfig({
  resolve: {
    // Tests run against the TypeScript sources; spawned relay processes run the build.
    alias: [
      { find: /^@keel\/engine$/, replacement: src('engine') },
      { find: /^@keel\/relay$/, replacement: src('relay') },
      { find: /^@keel\/client\/node$/, replacement: src('client', 'node') },
      { find: /^@keel\/client\/browser$/, replacement: src('client', 'browser') },
      { find: /^@keel\/client$/, replacement: src('client') },
    ],
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
