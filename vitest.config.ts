import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (pkg: string, entry = 'index') =>
  fileURLToPath(new URL(`./packages/${pkg}/src/${entry}.ts`, import.meta.url));

/**
 * Two test sets. The default one (unit, property, end-to-end) runs files in parallel. The
 * attack set (KEEL_TEST_SET=attacks: test/attacks) runs alone, one file at a time, after it:
 * each file loads a relay to its limits and times an honest user's crisis edits meanwhile, so
 * it must not share the machine's two cores with other test files.
 */
const attacks = process.env.KEEL_TEST_SET === 'attacks';

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
    include: attacks ? ['test/attacks/**/*.test.ts'] : ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
    exclude: attacks ? [] : ['test/attacks/**', '**/node_modules/**'],
    fileParallelism: !attacks,
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
