import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { RelayProcess } from '../support/relay-process.js';
import { useTestScope } from '../support/scope.js';
import { newWebhookSecret, runScript, scriptedRunEnv } from '../support/scripted-run.js';

/*
 * GET /metrics and GET /readyz of a real relay process, after a scripted run of real devices
 * (test/support/scripted-run.ts): the counters and gauges must say what happened.
 */

const scope = useTestScope();

/** Scrapes /metrics; returns the status and the exposition text. */
const scrape = async (relay: RelayProcess, token?: string): Promise<{ status: number; text: string; type: string | null }> => {
  const response = await fetch(`${relay.httpUrl}/metrics`, {
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5_000),
  });
  return { status: response.status, text: await response.text(), type: response.headers.get('content-type') };
};

/** Scrapes until `ready(text)` holds (bounded), and returns the last exposition either way. */
const scrapeUntil = async (relay: RelayProcess, ready: (text: string) => boolean, timeoutMs = 5_000): Promise<string> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { text } = await scrape(relay);
    if (ready(text) || Date.now() > deadline) return text;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
};

/** Every sample of a metric, as `labels → value` (labels as written, `''` when none). */
const samples = (text: string, name: string): Map<string, number> => {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^([a-z0-9_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (match && match[1] === name) out.set(match[2] ?? '', Number(match[3]));
  }
  return out;
};
const value = (text: string, name: string, labels = ''): number | undefined => samples(text, name).get(labels);
/** The sum over every sample of `name` whose labels contain each of `having`. */
const sum = (text: string, name: string, ...having: string[]): number =>
  [...samples(text, name)].filter(([labels]) => having.every((h) => labels.includes(h))).reduce((n, [, v]) => n + v, 0);

describe('GET /metrics', () => {
  it('counts what a scripted run of 2 users and 4 devices did: devices, crisis and bulk traffic, a refusal, a webhook, a tier change', async () => {
    const secret = newWebhookSecret();
    const relay = await scope.relay({ env: scriptedRunEnv(secret) });
    const run = await runScript(scope, relay, secret, `M${randomBytes(6).toString('hex')}`);
    // The refused raw socket has gone: only the four devices remain.
    let text = await scrapeUntil(relay, (t) => value(t, 'keel_connections') === 4);
    expect(value(text, 'keel_connections')).toBe(4);
    expect(value(text, 'keel_authenticated_connections')).toBe(4);
    expect(value(text, 'keel_authenticated_devices')).toBe(run.devices.length);
    expect(value(text, 'keel_devices_registered_total')).toBe(4);
    expect(sum(text, 'keel_authentications_total')).toBeGreaterThanOrEqual(4);
    expect(sum(text, 'keel_auth_failures_total')).toBe(0);
    // Exactly the one frame the script had refused.
    expect(value(text, 'keel_refusals_total', '{code="NOT_AUTHENTICATED",frame="push",kind="bad-frame"}')).toBe(1);
    expect(sum(text, 'keel_refusals_total')).toBe(1);
    // Crisis lanes are 9 and 10; every crisis edit of both users was committed and delivered.
    const crisisCommitted = sum(text, 'keel_envelopes_committed_total', 'lane="10"') + sum(text, 'keel_envelopes_committed_total', 'lane="9"');
    expect(crisisCommitted).toBeGreaterThanOrEqual(2 * run.crisisEdits);
    expect(sum(text, 'keel_committed_bytes_total', 'lane="10"')).toBeGreaterThan(0);
    expect(sum(text, 'keel_frames_delivered_total', 'lane="10"')).toBeGreaterThanOrEqual(2);
    expect(value(text, 'keel_commit_latency_ms_count', '{class="crisis"}')).toBeGreaterThanOrEqual(2 * run.crisisEdits);
    // Bulk (the mood journal, lane 6) travelled too, and was not counted as crisis.
    expect(sum(text, 'keel_envelopes_committed_total', 'lane="6"')).toBeGreaterThanOrEqual(2);
    expect(value(text, 'keel_commit_latency_ms_count', '{class="bulk"}')).toBeGreaterThanOrEqual(2);
    expect(value(text, 'keel_commit_batch_envelopes_count')).toBeGreaterThanOrEqual(1);
    expect(value(text, 'keel_webhooks_total', `{outcome="${run.webhookOutcome}"}`)).toBe(1);
    expect(value(text, 'keel_tier_changes_total', '{to="basic"}')).toBe(1);
    // Gauges read at scrape time.
    expect(value(text, 'keel_work_queue_tasks')).toBeGreaterThanOrEqual(0);
    expect(samples(text, 'keel_outbound_queued_chars').size).toBe(10);
    // The other device of each user confirmed the crisis edits it applied: the SLA, measured.
    expect(value(text, 'keel_crisis_e2e_latency_ms_count')).toBeGreaterThanOrEqual(run.crisisEdits);
    expect(value(text, 'keel_crisis_receipts_missing_total')).toBe(0);
    expect((value(text, 'keel_sync_operations_total', '{tier="premium"}') ?? 0) + (value(text, 'keel_sync_operations_total', '{tier="basic"}') ?? 0)).toBeGreaterThan(0);
    expect(value(text, 'keel_http_refusals_total', '{area="webhook",code="BAD_SIGNATURE"}')).toBe(0);

    // A device leaving: the gauges follow.
    await run.devices[3]!.client.close();
    text = await scrapeUntil(relay, (t) => value(t, 'keel_authenticated_devices') === 3);
    expect(value(text, 'keel_authenticated_devices')).toBe(3);
    expect(value(text, 'keel_connections')).toBe(3);
  });

  it('requires the bearer token when one is set, and answers in the Prometheus text format', async () => {
    const token = randomBytes(24).toString('base64url');
    const relay = await scope.relay({ env: { KEEL_RELAY_METRICS_TOKEN: token } });
    const none = await scrape(relay);
    expect(none.status).toBe(401);
    expect(JSON.parse(none.text)).toMatchObject({ error: 'NOT_AUTHENTICATED' });
    expect((await scrape(relay, `${token}x`)).status).toBe(401);
    const ok = await scrape(relay, token);
    expect(ok.status).toBe(200);
    expect(ok.type).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(ok.text).toContain('# TYPE keel_connections gauge');
    // The two refusals were counted and logged once (throttled), without the token.
    expect(value(ok.text, 'keel_http_refusals_total', '{area="metrics",code="NOT_AUTHENTICATED"}')).toBe(2);
    expect(relay.output().match(/"msg":"metrics scrape refused"/g)).toHaveLength(1);
    expect(relay.output()).not.toContain(token);
  });

  it('/readyz answers 200 while the relay serves', async () => {
    const relay = await scope.relay();
    const response = await fetch(`${relay.httpUrl}/readyz`, { signal: AbortSignal.timeout(5_000) });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ status: 'ready' });
  });
});
