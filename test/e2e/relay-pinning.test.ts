import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type ClientStore, type Identity, createIdentity, joinWithPairingCode, linkNewDevice, parseIdentity, serializeIdentity } from '@keel/client';
import { openSqliteClientStore } from '@keel/client/node';
import { DEFAULT_TIERS, ErrorCode, cryptoReady, encodeFrame, parseClientFrame } from '@keel/engine';
import Database from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { type Device, waitFor } from '../support/devices.js';
import { type RelayProcess, type RelayProcessOptions, startRelayProcess } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();
beforeAll(async () => {
  await cryptoReady();
});

const SPEC = { class: 'safety_plan', name: 'main' } as const;
/** Generated ids: `keel-` + 16 random bytes, base64url. */
const GENERATED_ID = /^keel-[A-Za-z0-9_-]{22}$/;

/** The relay id a relay reports on /healthz. */
const healthId = async (relay: RelayProcess): Promise<string> => {
  const response = await fetch(`${relay.httpUrl}/healthz`);
  const body = (await response.json()) as { relay: string };
  return body.relay;
};

/** A relay process on a directory the test owns, so it can be restarted on the same database. */
const relayOn = async (dir: string, options: RelayProcessOptions = {}): Promise<RelayProcess> => {
  const relay = await startRelayProcess({ ...options, dir });
  scope.defer(() => relay.stop());
  return relay;
};

const tempDir = (prefix: string): string => {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scope.defer(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};

/** A device whose store is a file, so a "restart" is a new client on the same file. */
const fileStore = (): ClientStore => {
  const store = openSqliteClientStore(join(tempDir('keel-device-'), 'device.db'));
  scope.defer(() => store.close());
  return store;
};

const finalError = async (device: Device) => {
  await waitFor(() => device.errors.some((e) => e.final), 5_000, 'a final error');
  return device.errors.find((e) => e.final)!;
};

/** Devices the relay registered, read from its database (it refuses nobody it never heard `auth` from). */
const registeredDevices = (relay: RelayProcess): string[] => {
  const db = new Database(relay.dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare<[], { device_id: string }>(`SELECT device_id FROM devices`).all().map((row) => row.device_id);
  } finally {
    db.close();
  }
};

/** What a relay's log says about one device's authentication. */
const authenticated = (relay: RelayProcess, identity: Identity): boolean =>
  relay
    .output()
    .split('\n')
    .some((line) => line.includes('"msg":"device connected"') && line.includes(identity.device.deviceId));

interface RelayInTheMiddle {
  readonly url: string;
  /** Frame types each device sent through it, in order, one array per connection. */
  readonly fromDevices: readonly string[][];
  /** Frame types the upstream relay sent through it, in order, across connections. */
  readonly fromRelay: readonly string[];
  close(): Promise<void>;
}

/**
 * A relay in the middle: accepts devices on 127.0.0.1, opens a connection to `upstream` for
 * each and forwards every frame both ways (the device's hello up, the real relay's challenge
 * down, an answer up if the device gives one), recording what passes.
 */
const startRelayInTheMiddle = async (upstream: string): Promise<RelayInTheMiddle> => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await once(wss, 'listening');
  const fromDevices: string[][] = [];
  const fromRelay: string[] = [];
  const uplinks = new Set<WebSocket>();
  const typeOf = (text: string): string => {
    const parsed = parseClientFrame(text, 1 << 20);
    return parsed.ok ? parsed.value.type : (JSON.parse(text) as { type: string }).type;
  };
  wss.on('connection', (device) => {
    const seen: string[] = [];
    fromDevices.push(seen);
    const up = new WebSocket(upstream, { perMessageDeflate: false });
    uplinks.add(up);
    const queued: string[] = [];
    up.on('open', () => {
      for (const text of queued.splice(0)) up.send(text);
    });
    up.on('message', (data) => {
      const text = (data as Buffer).toString('utf8');
      fromRelay.push((JSON.parse(text) as { type: string }).type);
      if (device.readyState === WebSocket.OPEN) device.send(text);
    });
    device.on('message', (data) => {
      const text = (data as Buffer).toString('utf8');
      seen.push(typeOf(text));
      if (up.readyState === WebSocket.OPEN) up.send(text);
      else queued.push(text);
    });
    const closeBoth = () => {
      if (device.readyState !== WebSocket.CLOSED) device.terminate();
      if (up.readyState !== WebSocket.CLOSED) up.terminate();
    };
    device.on('close', closeBoth);
    device.on('error', closeBoth);
    up.on('close', () => {
      uplinks.delete(up);
      closeBoth();
    });
    up.on('error', closeBoth);
  });
  const { port } = wss.address() as AddressInfo;
  return {
    url: `ws://127.0.0.1:${port}`,
    fromDevices,
    fromRelay,
    close: async () => {
      for (const client of wss.clients) client.terminate();
      for (const up of uplinks) up.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
};

const relayInTheMiddle = async (upstream: string): Promise<RelayInTheMiddle> => {
  const mitm = await startRelayInTheMiddle(upstream);
  scope.defer(() => mitm.close());
  return mitm;
};

describe('relay id per deployment', () => {
  it('generates an id at the first start and keeps it through a clean restart and kill -9; another deployment gets another', async () => {
    const dir = tempDir('keel-relay-');
    const first = await relayOn(dir);
    const id = await healthId(first);
    expect(id).toMatch(GENERATED_ID);
    expect(first.output()).toMatch(new RegExp(`"msg":"listening"[^\\n]*"relay":"${id}"`));
    await first.stop();

    const second = await relayOn(dir);
    expect(await healthId(second)).toBe(id);
    await second.kill9();

    const third = await relayOn(dir);
    expect(await healthId(third)).toBe(id);

    const other = await scope.relay();
    const otherId = await healthId(other);
    expect(otherId).toMatch(GENERATED_ID);
    expect(otherId).not.toBe(id);
  });

  it('uses a configured id over the kept one, with a warning, and keeps the first id in the database', async () => {
    const dir = tempDir('keel-relay-');
    const first = await relayOn(dir);
    const kept = await healthId(first);
    await first.stop();

    const configured = await relayOn(dir, { args: ['--relay-id', 'keel-operator-choice'] });
    expect(await healthId(configured)).toBe('keel-operator-choice');
    const warning = configured
      .output()
      .split('\n')
      .find((line) => line.includes('"level":"warn"') && line.includes('configured relay id differs'));
    expect(warning).toContain(`"stored":"${kept}"`);
    await configured.stop();

    // Through the environment as well; an id it would keep, not warn about, on a new database.
    const fromEnv = await relayOn(tempDir('keel-relay-'), { env: { KEEL_RELAY_ID: 'keel-from-env' } });
    expect(await healthId(fromEnv)).toBe('keel-from-env');
    expect(fromEnv.output()).not.toContain('"level":"warn"');

    const again = await relayOn(dir);
    expect(await healthId(again)).toBe(kept);
  });
});

describe('devices pin the relay id on first contact', () => {
  it('a device pinned to relay A refuses relay B: no answer to its challenge, RELAY_MISMATCH, unsent edits kept', async () => {
    const relayA = await scope.relay();
    const relayB = await scope.relay();
    const idA = await healthId(relayA);
    const identity = await createIdentity();
    const store = fileStore();

    const first = await scope.device(relayA.url, identity, store);
    const doc1 = await first.client.open(SPEC);
    doc1.getMap('plan').set('reason', 'my dog');
    await first.client.flush();
    expect(first.client.relayId).toBe(idA);
    await first.client.close();

    // The app is pointed at another deployment (a stale config, a hostile network).
    const moved = await scope.device(relayB.url, identity, store);
    const doc2 = await moved.client.open(SPEC);
    expect(doc2.getMap('plan').get('reason')).toBe('my dog');
    doc2.getMap('plan').set('call', '988');
    const error = await finalError(moved);
    expect(error.code).toBe(ErrorCode.RELAY_MISMATCH);
    expect(error.message).toContain(idA);
    await waitFor(() => moved.client.status === 'offline', 2_000, 'offline');
    await expect(moved.client.whenSynced()).rejects.toThrow(/RELAY_MISMATCH/);
    await expect(moved.client.flush()).rejects.toThrow(/RELAY_MISMATCH/);
    expect(moved.client.relayId).toBe(idA);
    // The refused edit stays in the device's store, waiting for the right relay.
    expect((await store.loadRange(['pending'])).length + (await store.loadRange(['outbox'])).length).toBeGreaterThan(0);
    expect(authenticated(relayB, identity)).toBe(false);
    expect(registeredDevices(relayB)).toEqual([]);
    expect(moved.errors.filter((e) => e.code !== ErrorCode.RELAY_MISMATCH)).toEqual([]);
    await moved.client.close();

    // Back on its own relay, the kept edit goes through.
    const back = await scope.device(relayA.url, identity, store);
    await back.client.open(SPEC);
    await back.client.flush();
    const other = await scope.device(relayA.url, await linkNewDevice(identity));
    const docOther = await other.client.open(SPEC);
    await waitFor(() => docOther.getMap('plan').get('call') === '988', 5_000, 'the kept edit at another device');
    expect([...back.errors, ...other.errors]).toEqual([]);
  });

  it('a relay in the middle that forwards another deployment’s challenge gets no answer', async () => {
    const home = await scope.relay();
    const elsewhere = await scope.relay();
    const identity = await createIdentity();
    const store = fileStore();
    const pinned = await scope.device(home.url, identity, store);
    await pinned.client.open(SPEC);
    await pinned.client.whenSynced();
    await pinned.client.close();

    // Control: the same forwarding in front of the pinned relay works, so a refusal is the id's doing.
    const inFrontOfHome = await relayInTheMiddle(home.url);
    const viaHome = await scope.device(inFrontOfHome.url, identity, store);
    await viaHome.client.open(SPEC);
    await viaHome.client.whenSynced();
    expect(inFrontOfHome.fromDevices[0]?.slice(0, 2)).toEqual(['hello', 'auth']);
    await viaHome.client.close();

    const mitm = await relayInTheMiddle(elsewhere.url);
    const victim = await scope.device(mitm.url, identity, store);
    (await victim.client.open(SPEC)).getMap('plan').set('step', 'breathe');
    expect((await finalError(victim)).code).toBe(ErrorCode.RELAY_MISMATCH);
    expect(mitm.fromRelay).toContain('challenge');
    expect(mitm.fromDevices).toEqual([['hello']]);
    expect(authenticated(elsewhere, identity)).toBe(false);
    expect(registeredDevices(elsewhere)).toEqual([]);
    // Final: the device does not come back for another try (well past its 50 ms base backoff).
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(mitm.fromDevices).toHaveLength(1);
  });

  it('a relay that skips the challenge is not believed: its `tier` and `ready` go nowhere, and nothing is pinned', async () => {
    const identity = await createIdentity();
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    scope.defer(async () => {
      for (const client of wss.clients) client.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    });
    await once(wss, 'listening');
    let closedByDevice = 0;
    wss.on('connection', (ws) => {
      ws.on('close', () => closedByDevice++);
      ws.on('message', () => {
        const tier = { name: 'premium' as const, policy: DEFAULT_TIERS.premium, since: 0 };
        ws.send(encodeFrame({ type: 'tier', tier }));
        ws.send(encodeFrame({ type: 'ready', user: identity.user.userId, device: identity.device.deviceId, certs: [identity.cert], tier }));
      });
    });
    const { port } = wss.address() as AddressInfo;
    const fooled = await scope.device(`ws://127.0.0.1:${port}`, identity);
    await fooled.client.open(SPEC);
    await waitFor(() => fooled.errors.some((e) => e.code === ErrorCode.UNEXPECTED_FRAME) && closedByDevice > 0, 5_000, 'the device hangs up');
    expect(fooled.client.status).not.toBe('connected');
    expect(fooled.client.status).not.toBe('synced');
    expect(fooled.client.relayId).toBeUndefined();
    expect(fooled.client.tier.name).toBe('trial');
  });

  it('a pinned device reconnects to its relay after the relay restarts (kill -9, same database and port)', async () => {
    const dir = tempDir('keel-relay-');
    const first = await relayOn(dir);
    const id = await healthId(first);
    const identity = await createIdentity();
    const store = fileStore();
    const a = await scope.device(first.url, identity, store);
    const doc = await a.client.open(SPEC);
    await a.client.whenSynced();
    expect(a.client.relayId).toBe(id);

    await first.kill9();
    doc.getMap('plan').set('while', 'relay down');
    await waitFor(() => a.client.status === 'offline', 5_000, 'the device notices the outage');
    const second = await relayOn(dir, { port: first.port });
    await a.client.flush();
    expect(authenticated(second, identity)).toBe(true);
    await a.client.close();

    // And a restart of the device keeps the pin: it still connects to the same deployment.
    const restarted = await scope.device(second.url, identity, store);
    expect(restarted.client.relayId).toBe(id);
    await restarted.client.open(SPEC);
    await restarted.client.whenSynced();
    expect([...a.errors, ...restarted.errors]).toEqual([]);
  });

  it('an explicit relayId option pins before first contact', async () => {
    const relay = await scope.relay({ args: ['--relay-id', 'keel-clinic-east'] });
    const identity = await createIdentity();

    const wrong = await scope.device(relay.url, identity, undefined, { relayId: 'keel-clinic-west' });
    expect(wrong.client.relayId).toBe('keel-clinic-west');
    await wrong.client.open(SPEC);
    expect((await finalError(wrong)).code).toBe(ErrorCode.RELAY_MISMATCH);
    expect(authenticated(relay, identity)).toBe(false);
    expect(registeredDevices(relay)).toEqual([]);

    const right = await scope.device(relay.url, identity, undefined, { relayId: 'keel-clinic-east' });
    await right.client.open(SPEC);
    await right.client.whenSynced();
    expect(right.client.relayId).toBe('keel-clinic-east');
    expect(right.errors).toEqual([]);
  });
});

describe('a linked device pins its linking device’s relay', () => {
  it('carries the pin in the sealed grant and the stored identity, and refuses another relay on first contact', async () => {
    const home = await scope.relay();
    const elsewhere = await scope.relay();
    const homeId = await healthId(home);
    const a = await scope.device(home.url, await createIdentity());
    await a.client.whenSynced();

    const { code, linked } = await a.client.startPairing({ ttlMs: 30_000 });
    const identity = await joinWithPairingCode({ url: home.url, code, WebSocket, relayId: homeId });
    await linked;
    expect(identity.relayId).toBe(homeId);
    const restored = await parseIdentity(serializeIdentity(identity));
    expect(restored.relayId).toBe(homeId);

    // Its very first client connection goes to another deployment: refused, nothing signed.
    const misdirected = await scope.device(elsewhere.url, restored);
    expect((await finalError(misdirected)).code).toBe(ErrorCode.RELAY_MISMATCH);
    expect(authenticated(elsewhere, restored)).toBe(false);

    const c = await scope.device(home.url, restored);
    await c.client.whenSynced();
    expect(c.client.relayId).toBe(homeId);
    expect(c.errors).toEqual([]);

    // A new device that knows its deployment refuses a grant from a device pinned to another.
    const second = await a.client.startPairing({ ttlMs: 30_000 });
    const refused = await joinWithPairingCode({ url: home.url, code: second.code, WebSocket, relayId: 'keel-some-other-deployment' }).catch((e: unknown) => e);
    expect((refused as { code?: string }).code).toBe(ErrorCode.RELAY_MISMATCH);
    await second.linked;
  });

  it('reads identities stored before relay pinning', async () => {
    const identity = await createIdentity();
    const text = serializeIdentity(identity);
    expect(JSON.parse(text)).not.toHaveProperty('relayId');
    const parsed = await parseIdentity(text);
    expect(parsed.relayId).toBeUndefined();
    expect(parsed.device.deviceId).toBe(identity.device.deviceId);
  });
});
