import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Identity, createIdentity, linkNewDevice } from '@keel/client';
import type { DocId, TierState } from '@keel/engine';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { type Device, waitFor } from '../support/devices.js';
import { logRowsByDevice } from '../support/raw-device.js';
import { type RelayProcess, runRelayCli } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

/** A relay whose tiers are docs/design.md's, with `overrides` applied as an operator would. */
const relayWith = async (defaultTier: 'trial' | 'basic' | 'grace_period' | 'premium', overrides?: unknown): Promise<RelayProcess> => {
  const args: string[] = [];
  if (overrides) {
    const dir = mkdtempSync(join(tmpdir(), 'keel-tiers-'));
    scope.defer(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'tiers.json');
    writeFileSync(file, JSON.stringify(overrides));
    args.push('--tiers', file);
  }
  return scope.relay({ defaultTier, args });
};

const device = (url: string, identity: Identity): Promise<Device> => scope.device(url, identity);

/** Two devices of one new user, both connected and synced. */
const pairOn = async (relay: RelayProcess) => {
  const idA = await createIdentity();
  const a = await device(relay.url, idA);
  await a.client.whenSynced();
  const b = await device(relay.url, await linkNewDevice(idA));
  await b.client.whenSynced();
  return { idA, a, b };
};

/** `length` characters that do not compress: limits are about bytes on the wire, and basic deflates. */
const noise = (length: number): string => randomBytes(length).toString('base64').slice(0, length);

/** Total ciphertext bytes the relay stored for a document. */
const ctBytes = (relay: RelayProcess, doc: DocId): number => {
  const db = new Database(relay.dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare<[string], { n: number }>(`SELECT coalesce(sum(length(ct)), 0) AS n FROM log WHERE doc_id = ?`).get(doc)!.n;
  } finally {
    db.close();
  }
};

const rowsOf = (relay: RelayProcess, doc: DocId): number => [...logRowsByDevice(relay.dbPath, doc).values()].reduce((n, c) => n + c, 0);

/** Resolves with the ms from now until `predicate` holds (polled every 2 ms), bounded. */
const timeUntil = async (predicate: () => boolean, timeoutMs = 5_000): Promise<number> => {
  const start = performance.now();
  await waitFor(predicate, timeoutMs);
  return performance.now() - start;
};

describe('trial tier', () => {
  it('syncs a safety-plan edit to the other device at once while a check-in waits for its batch window', async () => {
    // The window is shortened from 30 s so the test can watch it pass.
    const relay = await relayWith('trial', { trial: { batchWindowMs: 1_500 } });
    const { a, b } = await pairOn(relay);
    const planA = await a.client.open({ class: 'safety_plan', name: 'main' });
    const planB = await b.client.open({ class: 'safety_plan', name: 'main' });
    const checkinA = await a.client.open({ class: 'checkin', name: 'today' });
    const checkinId = a.client.docId({ class: 'checkin', name: 'today' });
    await Promise.all([a.client.whenSynced(), b.client.whenSynced()]);

    const writtenAt = performance.now();
    checkinA.getMap('mood').set('score', 4);
    planA.getText('reasons').insert(0, 'call my sister');
    const planLatency = await timeUntil(() => planB.getText('reasons').toString() === 'call my sister');
    expect(planLatency).toBeLessThan(200);

    // Inside the window the check-in has not left the device.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, 1_000 - (performance.now() - writtenAt))));
    expect(rowsOf(relay, checkinId)).toBe(0);
    // After it, the relay has it (backed up, not fanned out: trial has no cross-device sync).
    await waitFor(() => rowsOf(relay, checkinId) === 1, 5_000, 'check-in at the relay');
    expect(performance.now() - writtenAt).toBeGreaterThanOrEqual(1_500);
    const checkinB = await b.client.open({ class: 'checkin', name: 'today' });
    await b.client.whenSynced();
    expect(checkinB.getMap('mood').get('score')).toBeUndefined();
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('fans out crisis edits to every device but keeps other edits as a backup only', async () => {
    const relay = await relayWith('trial');
    const { a, b } = await pairOn(relay);
    const specs = [
      { class: 'profile', name: 'me' },
      { class: 'crisis_contacts', name: 'main' },
    ] as const;
    const [profileA, contactsA] = await Promise.all(specs.map((s) => a.client.open(s)));
    const [profileB, contactsB] = await Promise.all(specs.map((s) => b.client.open(s)));
    profileA!.getMap('p').set('name', 'Sam');
    contactsA!.getMap('c').set('sister', '555-0100');
    await a.client.flush();
    await waitFor(() => contactsB!.getMap('c').get('sister') === '555-0100', 2_000, 'crisis contacts at B');
    // The profile was stored by the relay but never delivered to B, live or on reconnect.
    expect(rowsOf(relay, a.client.docId(specs[0]))).toBe(1);
    const b2 = await device(relay.url, b.client.identity);
    await b.client.close();
    const profileB2 = await b2.client.open(specs[0]);
    await b2.client.whenSynced();
    expect(profileB2.getMap('p').get('name')).toBeUndefined();
    expect(profileB!.getMap('p').get('name')).toBeUndefined();
    expect([...a.errors, ...b2.errors]).toEqual([]);
  });

  it('syncs a crisis assessment at crisis priority and turns crisis mode on everywhere', async () => {
    const relay = await relayWith('trial');
    const { a, b } = await pairOn(relay);
    const crisisAtB = new Promise<void>((resolve) => b.client.on('crisis', (active) => active && resolve()));
    const started = performance.now();
    const result = await a.client.recordAssessment('phq9-2026-11-25', { kind: 'phq9', answers: [1, 1, 1, 0, 0, 1, 0, 0, 1] });
    expect(result.crisis).toBe(true);
    expect(result.reasons).toContain('phq9_item9');
    await crisisAtB;
    expect(performance.now() - started).toBeLessThan(500);
    expect(b.client.crisisMode).toBe(true);
    // The assessment itself (lane 9) reached B although trial fans out nothing else.
    const assessmentB = await b.client.open({ class: 'assessment', name: 'phq9-2026-11-25' });
    await waitFor(() => assessmentB.getMap('assessment').get('crisis') === true, 2_000, 'assessment at B');
  });
});

describe('basic tier', () => {
  it('defers bulk data over the daily cap but never crisis data, and drops nothing', async () => {
    const relay = await relayWith('basic', { basic: { dailyBytes: 8_192 } });
    const { a, b } = await pairOn(relay);
    const deferred: string[] = [];
    a.client.on('deferred', (d) => deferred.push(d.code));
    const historyA = await a.client.open({ class: 'history', name: 'journal' });
    const planA = await a.client.open({ class: 'safety_plan', name: 'main' });
    const planB = await b.client.open({ class: 'safety_plan', name: 'main' });
    const historyId = a.client.docId({ class: 'history', name: 'journal' });
    historyA.getText('t').insert(0, noise(20_000));
    void a.client.flush().catch(() => {});
    await waitFor(() => deferred.includes('QUOTA_EXCEEDED'), 5_000, 'daily-cap deferral');
    expect(rowsOf(relay, historyId)).toBe(0);

    // Over the cap, a crisis edit as large still goes through at once.
    planA.getText('steps').insert(0, noise(20_000));
    await waitFor(() => planB.getText('steps').length === 20_000, 2_000, 'crisis edit at B');
    expect(rowsOf(relay, historyId)).toBe(0);
    // The deferred history is still in A's outbox, waiting for the next day: not lost.
    expect(a.errors).toEqual([]);
    expect((await a.store.loadRange(['outbox', historyId])).length).toBe(1);
  });

  it('defers past the bandwidth limit and delivers everything in the end', async () => {
    const relay = await relayWith('basic', { basic: { bandwidthBytesPerSec: 8_192 } });
    const { a, b } = await pairOn(relay);
    let deferrals = 0;
    a.client.on('deferred', () => deferrals++);
    const names = ['a', 'b', 'c', 'd'];
    const docsA = await Promise.all(names.map((name) => a.client.open({ class: 'checkin', name })));
    const docsB = await Promise.all(names.map((name) => b.client.open({ class: 'checkin', name })));
    docsA.forEach((d) => d.getText('t').insert(0, noise(12_000)));
    await a.client.flush();
    await waitFor(() => docsB.every((d) => d.getText('t').length === 12_000), 15_000, 'all check-ins at B');
    docsA.forEach((d, i) => expect(Y.encodeStateAsUpdate(d)).toEqual(Y.encodeStateAsUpdate(docsB[i]!)));
    expect(deferrals).toBeGreaterThan(0);
    expect(a.errors).toEqual([]);
  });
});

describe('the tier never switches compression on', () => {
  it('seals the same text to the same padded size on basic (bandwidth-limited) and premium, and delivers the same bytes', async () => {
    const stored: number[] = [];
    for (const tier of ['basic', 'premium'] as const) {
      const relay = await relayWith(tier);
      const { a, b } = await pairOn(relay);
      const spec = { class: 'checkin', name: 'long' } as const;
      const docA = await a.client.open(spec);
      const docB = await b.client.open(spec);
      docA.getText('t').insert(0, 'I breathed in for four and out for six. '.repeat(1_250));
      await a.client.flush();
      await waitFor(() => docB.getText('t').length === docA.getText('t').length, 5_000, `delivery on ${tier}`);
      expect(Y.encodeStateAsUpdate(docB)).toEqual(Y.encodeStateAsUpdate(docA));
      stored.push(ctBytes(relay, a.client.docId(spec)));
    }
    // 50 KB of very repetitive text: deflated it would be ~1 KB, and that size would tell the relay so.
    expect(stored[0]).toBeGreaterThan(50_000);
    expect(stored[0]).toBe(stored[1]);
    // A power-of-two padding bucket plus the AEAD tag.
    expect(Math.log2(stored[0]! - 16) % 1).toBe(0);
  });
});

describe('max single sync size', () => {
  it('refuses an oversized bulk sync with a typed error, keeps it, and sends it once the tier allows', async () => {
    const relay = await relayWith('basic', { basic: { maxSyncBytes: 4_096 } });
    const { idA, a, b } = await pairOn(relay);
    const errors: string[] = [];
    a.client.on('error', (e) => errors.push(e.code));
    const historyA = await a.client.open({ class: 'history', name: 'big' });
    const historyB = await b.client.open({ class: 'history', name: 'big' });
    const planA = await a.client.open({ class: 'safety_plan', name: 'main' });
    const planB = await b.client.open({ class: 'safety_plan', name: 'main' });
    historyA.getText('t').insert(0, noise(10_000));
    void a.client.flush().catch(() => {});
    await waitFor(() => errors.includes('QUOTA_EXCEEDED'), 5_000, 'max-sync refusal');
    // Crisis data of the same size is never limited.
    planA.getText('t').insert(0, noise(10_000));
    await waitFor(() => planB.getText('t').length === 10_000, 2_000, 'crisis edit at B');
    expect(historyB.getText('t').length).toBe(0);

    const set = await runRelayCli(['tier', 'set', idA.user.userId, 'premium', '--url', relay.httpUrl], {
      KEEL_RELAY_ADMIN_TOKEN: relay.adminToken,
    });
    expect(set.code).toBe(0);
    await waitFor(() => historyB.getText('t').length === 10_000, 5_000, 'refused sync delivered after the upgrade');
  });
});

describe('operator tier changes', () => {
  it('reach online devices at once and release what the old tier withheld', async () => {
    const relay = await relayWith('trial');
    const { idA, a, b } = await pairOn(relay);
    const profileA = await a.client.open({ class: 'profile', name: 'me' });
    const profileB = await b.client.open({ class: 'profile', name: 'me' });
    profileA.getMap('p').set('name', 'Sam');
    await a.client.flush();
    expect(profileB.getMap('p').get('name')).toBeUndefined();

    const tiersAtB: TierState[] = [];
    b.client.on('tier', (t) => tiersAtB.push(t));
    const env = { KEEL_RELAY_ADMIN_TOKEN: relay.adminToken };
    const set = await runRelayCli(['tier', 'set', idA.user.userId, 'premium', '--url', relay.httpUrl], env);
    expect(set.stderr).toBe('');
    expect(set.code).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({ tier: 'premium', previous: 'trial' });
    // Pushed by the relay as it applied the change: there by the time the command returned, or just after.
    await waitFor(() => tiersAtB.length > 0 && a.client.tier.name === 'premium', 1_000, 'tier at both devices');
    expect(tiersAtB[0]!.policy.realtime).toBe(true);
    // Withheld under trial, delivered now.
    await waitFor(() => profileB.getMap('p').get('name') === 'Sam', 2_000, 'withheld profile released');
    // And new edits sync in realtime.
    profileA.getMap('p').set('pronouns', 'they');
    await waitFor(() => profileB.getMap('p').get('pronouns') === 'they', 1_000, 'realtime edit');

    // The subscription view is kept under its own key; no document carries payment fields.
    const tierRecord = await b.store.load(['client', 'tier']);
    expect(new TextDecoder().decode(tierRecord)).toContain('"premium"');
    for (const chunk of await b.store.loadRange(['doc'])) {
      const text = Buffer.from(chunk.data).toString('latin1');
      for (const field of ['premium', 'trial', 'tier', 'price', 'subscription']) expect(text).not.toContain(field);
    }
  });

  it('refuses unauthenticated or malformed operator commands and changes nothing', async () => {
    const relay = await relayWith('trial');
    const id = await createIdentity();
    const url = ['--url', relay.httpUrl];
    const wrong = await runRelayCli(['tier', 'set', id.user.userId, 'premium', ...url], { KEEL_RELAY_ADMIN_TOKEN: 'x'.repeat(32) });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain('401');
    const badTier = await runRelayCli(['tier', 'set', id.user.userId, 'platinum', ...url], { KEEL_RELAY_ADMIN_TOKEN: relay.adminToken });
    expect(badTier.code).toBe(64);
    expect(badTier.stderr).toContain('is not a tier');
    const badUser = await runRelayCli(['tier', 'set', 'bob', 'premium', ...url], { KEEL_RELAY_ADMIN_TOKEN: relay.adminToken });
    expect(badUser.code).toBe(64);
    const get = await runRelayCli(['tier', 'get', id.user.userId, ...url], { KEEL_RELAY_ADMIN_TOKEN: relay.adminToken });
    expect(get.code).toBe(0);
    expect(JSON.parse(get.stdout)).toMatchObject({ tier: 'trial' });
  });
});

describe('manual conflict resolution', () => {
  it('stages remote changes until the app accepts them; crisis documents merge at once', async () => {
    // Trial resolves conflicts manually; cross-device sync is switched on so there is something to stage.
    const relay = await relayWith('trial', { trial: { crossDevice: true, batchWindowMs: 0 } });
    const { a, b } = await pairOn(relay);
    const spec = { class: 'checkin', name: 'today' } as const;
    const checkinA = await a.client.open(spec);
    const checkinB = await b.client.open(spec);
    const planA = await a.client.open({ class: 'safety_plan', name: 'main' });
    const planB = await b.client.open({ class: 'safety_plan', name: 'main' });
    checkinB.getMap('m').set('mine', 'b');
    checkinA.getMap('m').set('theirs', 'a');
    planA.getMap('p').set('step', 'breathe');
    await Promise.all([a.client.flush(), b.client.flush()]);
    await waitFor(() => b.client.stagedCount(spec) > 0, 3_000, 'staged at B');
    await waitFor(() => planB.getMap('p').get('step') === 'breathe', 2_000, 'crisis plan merged at once');
    expect(checkinB.getMap('m').get('theirs')).toBeUndefined();
    expect(await b.client.acceptStaged(spec)).toBeGreaterThan(0);
    expect(checkinB.getMap('m').toJSON()).toEqual({ mine: 'b', theirs: 'a' });
    expect(b.client.stagedCount(spec)).toBe(0);
  });
});
