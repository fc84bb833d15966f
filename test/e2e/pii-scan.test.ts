import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { RelayProcess } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';
import { newWebhookSecret, runScript, scriptedRunEnv } from '../support/scripted-run.js';

/*
 * A unique marker planted in everything a person might write or a payment provider might say —
 * document names, document contents (text, map keys and values), the webhook's name, email and
 * metadata — then looked for, in every encoding a leak could take, in everything the relay
 * leaves behind: its database, WAL and shared-memory files (the audit table included), its
 * captured stdout/stderr log, and its /metrics output.
 */

const scope = useTestScope();

/**
 * The forms `marker` takes when written as-is or inside a longer encoded value: UTF-8, UTF-16LE,
 * hex (either case), and base64 / base64url at each of the three byte alignments it can have
 * inside a longer buffer (only the characters that depend on the marker's bytes alone).
 */
const encodingsOf = (marker: string): string[] => {
  const bytes = Buffer.from(marker, 'utf8');
  const forms = new Set<string>([marker, bytes.toString('hex'), bytes.toString('hex').toUpperCase()]);
  for (let k = 0; k < 3; k++) {
    const padded = Buffer.concat([Buffer.alloc(k, 0xff), bytes]);
    const from = Math.ceil((8 * k) / 6);
    const to = Math.floor((8 * (k + bytes.length)) / 6);
    forms.add(padded.toString('base64').slice(from, to));
    forms.add(padded.toString('base64url').slice(from, to));
  }
  return [...forms];
};

/** Every file SQLite may have written for the relay. */
const databaseFiles = (relay: RelayProcess): Buffer =>
  Buffer.concat([relay.dbPath, `${relay.dbPath}-wal`, `${relay.dbPath}-shm`].filter(existsSync).map((path) => readFileSync(path)));

/** The forms of `marker` found in `haystack` (as UTF-8 text or, for the plain marker, UTF-16LE). */
const leaks = (haystack: Buffer, marker: string): string[] => [
  ...encodingsOf(marker).filter((form) => haystack.includes(Buffer.from(form, 'utf8'))),
  ...(haystack.includes(Buffer.from(marker, 'utf16le')) ? ['utf16le'] : []),
];

describe('no personal data leaves a trace on the relay', () => {
  it('finds the marker in no encoding in the database, WAL, SHM, audit, log or /metrics after a scripted run', async () => {
    const secret = newWebhookSecret();
    const relay = await scope.relay({ env: scriptedRunEnv(secret) });
    const marker = `PIIMARK${randomBytes(8).toString('hex')}`;
    const run = await runScript(scope, relay, secret, marker);
    expect(run.devices).toHaveLength(4);

    // The scan must be able to fail: the marker's forms are found where they are.
    const planted = Buffer.from(`prefix-${Buffer.from(`xx${marker}yy`).toString('base64')}-suffix`);
    expect(leaks(planted, marker).length).toBeGreaterThan(0);

    const metrics = await (await fetch(`${relay.httpUrl}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
    expect(metrics).toContain('keel_envelopes_committed_total');
    expect(leaks(Buffer.from(metrics), marker), '/metrics').toEqual([]);

    // While running (recent commits still in the WAL), then after a clean stop (checkpointed).
    const running = databaseFiles(relay);
    expect(running.length).toBeGreaterThan(0);
    expect(leaks(running, marker), 'database while running').toEqual([]);
    await relay.stop();
    expect(leaks(databaseFiles(relay), marker), 'database after stop').toEqual([]);

    const log = relay.output();
    // The log did record the run: connections, and the refused frame.
    expect(log).toContain('"msg":"device connected"');
    expect(log).toContain('"msg":"bad frame"');
    expect(leaks(Buffer.from(log), marker), 'stdout/stderr').toEqual([]);
  });
});
