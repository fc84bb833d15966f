import { type Identity, createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { createNodeClient } from '@keel/client/node';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { type Device, cutOff, waitFor } from '../support/devices.js';
import { type RelayProcess, runRelayCli } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

/** A device of `identity`, presenting `signupToken` if given; closed after the test. */
const device = async (relay: RelayProcess, identity: Identity, signupToken?: string): Promise<Device> => {
  const store = createMemoryStore();
  const client = await createNodeClient({
    url: relay.url,
    identity,
    storage: store,
    backoff: { baseMs: 50, maxMs: 500 },
    ...(signupToken === undefined ? {} : { signupToken }),
  });
  scope.defer(() => client.close());
  const d: Device = { client, store, errors: [] };
  client.on('error', (e) => d.errors.push(e));
  return d;
};

/** A token from the real CLI, against the running relay's database. */
const newToken = async (relay: RelayProcess, expires?: string): Promise<string> => {
  const result = await runRelayCli(['signup-token', 'create', '--db', relay.dbPath, ...(expires ? ['--expires', expires] : [])]);
  expect(result.code, result.stderr).toBe(0);
  const token = result.stdout.trim();
  expect(token).toMatch(/^kst_[A-Za-z0-9_-]{43}$/);
  return token;
};

/** Everything the relay and the link told the device (the error frame's sentence comes before the final close). */
const messages = (d: Device): string => d.errors.map((e) => `${e.code}: ${e.message}`).join('\n');

/** A device is served when a write of it is acknowledged by the relay. */
const served = async (d: Device): Promise<void> => {
  const doc = await d.client.open({ class: 'mood', name: 'today' });
  doc.getText('t').insert(0, 'hello');
  await d.client.flush();
};

const usersOf = (relay: RelayProcess): number => {
  const db = new Database(relay.dbPath, { readonly: true });
  try {
    return db.prepare<[], { n: number }>(`SELECT count(*) AS n FROM users`).get()!.n;
  } finally {
    db.close();
  }
};

describe('--registration token', () => {
  it('refuses a new user without a token, or with an unknown, used or expired one; a valid token works once', async () => {
    const relay = await scope.relay({ args: ['--registration', 'token'] });

    const none = await device(relay, await createIdentity());
    expect(await cutOff(none)).toBe('SIGNUP_TOKEN_REQUIRED');

    const unknown = await device(relay, await createIdentity(), `kst_${'A'.repeat(43)}`);
    expect(await cutOff(unknown)).toBe('SIGNUP_TOKEN_INVALID');
    expect(messages(unknown)).toContain('no such signup token');

    const token = await newToken(relay);
    const first = await device(relay, await createIdentity(), token);
    await served(first);
    expect(first.errors.filter((e) => e.final)).toEqual([]);

    const reused = await device(relay, await createIdentity(), token);
    expect(await cutOff(reused)).toBe('SIGNUP_TOKEN_INVALID');
    expect(messages(reused)).toContain('already used');

    // An expired token: created for a minute, then the minute has passed (its row says so).
    const stale = await newToken(relay, '1m');
    const db = new Database(relay.dbPath);
    db.prepare(`UPDATE signup_tokens SET expires_at = ? WHERE used_at IS NULL`).run(Date.now() - 1);
    db.close();
    const expired = await device(relay, await createIdentity(), stale);
    expect(await cutOff(expired)).toBe('SIGNUP_TOKEN_INVALID');
    expect(messages(expired)).toContain('expired');

    // Only the one user the token admitted exists; the refused ones left nothing behind.
    expect(usersOf(relay)).toBe(1);
    // Nothing in the relay's log names a token.
    expect(relay.output()).not.toContain(token);
    expect(relay.output()).not.toContain(stale);
  });

  it("lets an existing user's devices in without a token: a linked device, and the first device again", async () => {
    const relay = await scope.relay({ args: ['--registration', 'token'] });
    const identity = await createIdentity();
    const first = await device(relay, identity, await newToken(relay));
    await served(first);
    await first.client.close();

    const linked = await device(relay, await linkNewDevice(identity));
    await served(linked);
    // The first device on a fresh store (a reinstall): known to the relay, no token needed.
    const again = await device(relay, identity);
    await waitFor(() => again.client.status === 'connected' || again.client.status === 'synced', 10_000, 'the first device to be served again');
    expect([...linked.errors, ...again.errors].filter((e) => e.final)).toEqual([]);
    expect(usersOf(relay)).toBe(1);
  });

  it('is off by default: an open relay creates users without a token', async () => {
    const relay = await scope.relay();
    const d = await device(relay, await createIdentity());
    await served(d);
    expect(d.errors.filter((e) => e.final)).toEqual([]);
  });

  it('refuses a bad --registration value and a bad --expires with a usage error', async () => {
    const relay = await scope.relay();
    const bad = await runRelayCli(['signup-token', 'create', '--db', relay.dbPath, '--expires', 'forever']);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain('a duration is a whole number');
    const serve = await runRelayCli(['--registration', 'invite-only', '--port', '0', '--db', `${relay.dir}/other.db`]);
    expect(serve.code).toBe(64);
    expect(serve.stderr).toContain('registration must be "open" or "token"');
  });
});
