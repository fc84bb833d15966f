import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import * as z from 'zod';

const SCRIPT = fileURLToPath(new URL('../../scripts/bundle-size.mjs', import.meta.url));

const ResultSchema = z.object({
  files: z.number(),
  rawBytes: z.number(),
  gzipBytes: z.number(),
  nodeBuiltins: z.array(z.string()),
  guardedFallbacks: z.array(z.string()),
});

/** Runs the bundle measurement (a real Vite production build of the built packages). */
const measure = (args: readonly string[] = []) =>
  new Promise<z.infer<typeof ResultSchema>>((resolve, reject) => {
    execFile(process.execPath, [SCRIPT, '--json', ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
      const line = stdout.split('\n').find((l) => l.startsWith('{'));
      if (!line) reject(new Error(`no result from bundle-size.mjs: ${error?.message ?? ''}\n${stdout}\n${stderr}`));
      else resolve(ResultSchema.parse(JSON.parse(line)));
    });
  });

describe('the browser bundle of a minimal app', () => {
  it('builds with Vite from @keel/client/browser without any Node-only module', async () => {
    const result = await measure();
    expect(result.nodeBuiltins).toEqual([]);
    expect(result.files).toBeGreaterThan(0);
    // Only libsodium's guarded getRandomValues fallback is left external.
    for (const f of result.guardedFallbacks) expect(f).toMatch(/^crypto .*libsodium/);
  }, 60_000);

  it('the check catches a leak: bundling @keel/client/node reports ws, better-sqlite3 and node built-ins', async () => {
    const result = await measure(['--entry', 'node']);
    const leaked = result.nodeBuiltins.join('\n');
    expect(leaked).toMatch(/^ws /m);
    expect(leaked).toMatch(/node:module|better-sqlite3/);
  }, 60_000);
});
