import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RelayIdSchema } from '@keel/engine';
import { afterEach, describe, expect, it } from 'vitest';
import { RelayConfigSchema } from '../src/config.js';
import type { LogLevel } from '../src/log.js';
import { resolveRelayId } from '../src/server/relay-id.js';
import { openSqliteStore } from '../src/storage/sqlite-store.js';
import type { RelayStore } from '../src/storage/relay-store.js';

const opened: RelayStore[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const store of opened.splice(0)) await store.close();
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

const openStore = async (): Promise<RelayStore> => {
  const dir = await mkdtemp(join(tmpdir(), 'keel-relay-id-'));
  dirs.push(dir);
  const store = openSqliteStore({ path: join(dir, 'relay.db') });
  opened.push(store);
  return store;
};

const capture = () => {
  const lines: { level: LogLevel; msg: string }[] = [];
  return { lines, log: { log: (level: LogLevel, msg: string) => void lines.push({ level, msg }) } };
};

describe('relay id resolution', () => {
  it('has no shared default and refuses ids with spaces or control characters', () => {
    expect(RelayConfigSchema.parse({}).relayId).toBeUndefined();
    expect(RelayConfigSchema.safeParse({ relayId: 'two words' }).success).toBe(false);
    expect(RelayConfigSchema.safeParse({ relayId: 'tab\there' }).success).toBe(false);
    expect(RelayConfigSchema.safeParse({ relayId: 'x'.repeat(129) }).success).toBe(false);
  });

  it('generates distinct ids per database and keeps each', async () => {
    const { log, lines } = capture();
    const one = await openStore();
    const two = await openStore();
    const id = await resolveRelayId(undefined, one, log);
    expect(id).toMatch(/^keel-[A-Za-z0-9_-]{22}$/);
    expect(await resolveRelayId(undefined, one, log)).toBe(id);
    expect(await resolveRelayId(undefined, two, log)).not.toBe(id);
    expect(lines).toEqual([]);
  });

  it('keeps a configured id at the first start; a different one later wins with a warning', async () => {
    const { log, lines } = capture();
    const store = await openStore();
    const east = RelayIdSchema.parse('keel-east');
    expect(await resolveRelayId(east, store, log)).toBe(east);
    expect(await resolveRelayId(undefined, store, log)).toBe(east);
    expect(lines).toEqual([]);
    const west = RelayIdSchema.parse('keel-west');
    expect(await resolveRelayId(west, store, log)).toBe(west);
    expect(lines).toEqual([{ level: 'warn', msg: expect.stringContaining('differs') }]);
    expect(await resolveRelayId(undefined, store, log)).toBe(east);
  });

  it('refuses to serve with a kept id that is not a valid relay id', async () => {
    const { log } = capture();
    const store = await openStore();
    await store.relayId('not valid');
    await expect(resolveRelayId(undefined, store, log)).rejects.toThrow(/relay id is invalid/);
  });
});
