import { DEFAULT_TIERS, type DeviceId, type DocId, type Seq, type UserId } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { createRelayEvents } from '../src/events/relay-events.js';
import { silentLogger } from '../src/log.js';
import { createRelayMetrics } from '../src/observe/metrics.js';

const u1 = 'u-one' as UserId;
const d1 = 'd-one' as DeviceId;
const d2 = 'd-two' as DeviceId;
const doc = 'doc-x' as DocId;

/** The value of one sample line of the exposition (`name{labels} value`), or undefined. */
const sample = (text: string, series: string): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
};

/** Metrics on a bus whose clock the test moves, and probes the test sets. */
const setup = () => {
  let t = 1_000;
  const events = createRelayEvents({ log: silentLogger, now: () => t });
  const probe = { work: 0, lanes: [] as number[] };
  const metrics = createRelayMetrics({
    events,
    probes: { workQueued: () => probe.work, outboundQueuedByLane: () => probe.lanes },
    tiers: DEFAULT_TIERS,
  });
  /** Connects `conn` now and returns its disconnect, which reports the time since on the bus's clock. */
  const connect = (conn: number) => {
    const at = events.now();
    events.emit('connected', { conn });
    return (code: number, who?: { user: UserId; device: DeviceId }) =>
      events.emit('disconnected', { conn, ...who, code, durationMs: events.now() - at });
  };
  return { events, metrics, probe, connect, advance: (ms: number) => (t += ms) };
};

describe('the metrics listener', () => {
  it('keeps the connection and authenticated-device gauges from connect, auth and disconnect events', async () => {
    const { events, metrics, connect, advance } = setup();
    const close1 = connect(1);
    const close2 = connect(2);
    const close3 = connect(3);
    events.emit('authenticated', { conn: 1, user: u1, device: d1, tier: 'premium', newUser: true });
    // A second connection of the same device: one more connection, not one more device.
    events.emit('authenticated', { conn: 2, user: u1, device: d1, tier: 'premium', newUser: false });
    let text = await metrics.render();
    expect(sample(text, 'keel_connections')).toBe(3);
    expect(sample(text, 'keel_authenticated_connections')).toBe(2);
    expect(sample(text, 'keel_authenticated_devices')).toBe(1);
    expect(sample(text, 'keel_authentications_total{tier="premium"}')).toBe(2);

    advance(30_000);
    close1(1000, { user: u1, device: d1 });
    close3(1006);
    text = await metrics.render();
    expect(sample(text, 'keel_connections')).toBe(1);
    expect(sample(text, 'keel_authenticated_devices')).toBe(1);
    close2(1001, { user: u1, device: d1 });
    text = await metrics.render();
    expect(sample(text, 'keel_connections')).toBe(0);
    expect(sample(text, 'keel_authenticated_connections')).toBe(0);
    expect(sample(text, 'keel_authenticated_devices')).toBe(0);
    expect(sample(text, 'keel_disconnects_total{code="1006"}')).toBe(1);
    expect(sample(text, 'keel_disconnects_total{code="1000"}')).toBe(1);
    // Durations on the bus's clock: both authenticated connections lasted 30 s; the unauthenticated one is not counted.
    expect(sample(text, 'keel_connection_duration_seconds_count')).toBe(2);
    expect(sample(text, 'keel_connection_duration_seconds_bucket{le="10"}')).toBe(0);
    expect(sample(text, 'keel_connection_duration_seconds_bucket{le="60"}')).toBe(2);
    expect(sample(text, 'keel_connection_duration_seconds_sum')).toBe(60);
  });

  it('counts envelopes and bytes by lane and buckets commit latency by class', async () => {
    const { events, metrics } = setup();
    events.emit('committed', { user: u1, device: d1, doc, lane: 10, envelopes: 2, bytes: 600, latencyMs: 3, tier: 'premium' });
    events.emit('committed', { user: u1, device: d1, doc, lane: 10, envelopes: 1, bytes: 100, latencyMs: 40, tier: 'premium' });
    events.emit('committed', { user: u1, device: d1, doc, lane: 2, envelopes: 5, bytes: 5_000, latencyMs: 700, tier: 'premium' });
    events.emit('commitBatch', { envelopes: 8, ms: 4 });
    const text = await metrics.render();
    expect(sample(text, 'keel_envelopes_committed_total{lane="10"}')).toBe(3);
    expect(sample(text, 'keel_committed_bytes_total{lane="10"}')).toBe(700);
    // Held to premium's 500 ms response time: one of three operations took longer.
    expect(sample(text, 'keel_sync_operations_total{tier="premium"}')).toBe(3);
    expect(sample(text, 'keel_tier_response_violations_total{tier="premium"}')).toBe(1);
    expect(sample(text, 'keel_tier_response_violations_total{tier="trial"}')).toBe(0);
    expect(sample(text, 'keel_envelopes_committed_total{lane="2"}')).toBe(5);
    expect(sample(text, 'keel_commit_latency_ms_bucket{le="5",class="crisis"}')).toBe(1);
    expect(sample(text, 'keel_commit_latency_ms_bucket{le="50",class="crisis"}')).toBe(2);
    expect(sample(text, 'keel_commit_latency_ms_count{class="crisis"}')).toBe(2);
    expect(sample(text, 'keel_commit_latency_ms_bucket{le="500",class="bulk"}')).toBe(0);
    expect(sample(text, 'keel_commit_latency_ms_bucket{le="1000",class="bulk"}')).toBe(1);
    expect(sample(text, 'keel_commit_batch_envelopes_bucket{le="4"}')).toBe(0);
    expect(sample(text, 'keel_commit_batch_envelopes_bucket{le="8"}')).toBe(1);
    expect(sample(text, 'keel_commit_batch_ms_sum')).toBe(4);
  });

  it('counts refusals, auth failures, deliveries, webhooks, awareness, devices, pairing and crisis anomalies', async () => {
    const { events, metrics } = setup();
    events.emit('refused', { user: u1, device: d1, code: 'COUNTER_GAP', frame: 'push', kind: 'rejected' });
    events.emit('refused', { code: 'NOT_AUTHENTICATED', frame: 'unknown', kind: 'bad-frame' });
    events.emit('refused', { code: 'NOT_AUTHENTICATED', frame: 'unknown', kind: 'bad-frame' });
    events.emit('authFailed', { code: 'UNKNOWN_DEVICE' });
    events.emit('delivered', { user: u1, device: d2, doc, lane: 10, entries: 4, bytes: 1_024 });
    events.emit('webhook', { outcome: 'BAD_SIGNATURE' });
    events.emit('awarenessForwarded', { recipients: 3 });
    events.emit('awarenessDropped', { reason: 'TIER' });
    events.emit('deviceRegistered', { user: u1, device: d2 });
    events.emit('deviceRevoked', { user: u1, device: d2 });
    events.emit('pairing', { outcome: 'granted' });
    events.emit('tierChanged', { user: u1, from: 'trial', to: 'premium' });
    events.emit('crisisAnomaly', { user: u1, device: d1, bytes: 20_000_000 });
    events.emit('httpRefused', { area: 'webhook', code: 'BAD_SIGNATURE' });
    events.emit('crisisMeasured', { user: u1, device: d2, doc, seq: 3 as Seq, latencyMs: 12, relayMs: 4, heldForCatchUp: false, breached: false });
    events.emit('crisisMeasured', { user: u1, device: d2, doc, seq: 4 as Seq, latencyMs: 340, relayMs: 300, heldForCatchUp: false, breached: true });
    events.emit('crisisReceiptMissing', { user: u1, device: d2, doc, seq: 5 as Seq, waitedMs: 5_000 });
    events.emit('alert', { kind: 'crisis_sla_breach' });
    events.emit('laneReported', { user: u1, reporter: d2, author: d1, doc, lane: 10 });
    const text = await metrics.render();
    expect(sample(text, 'keel_refusals_total{code="COUNTER_GAP",frame="push",kind="rejected"}')).toBe(1);
    expect(sample(text, 'keel_refusals_total{code="NOT_AUTHENTICATED",frame="unknown",kind="bad-frame"}')).toBe(2);
    expect(sample(text, 'keel_auth_failures_total{code="UNKNOWN_DEVICE"}')).toBe(1);
    expect(sample(text, 'keel_frames_delivered_total{lane="10"}')).toBe(1);
    expect(sample(text, 'keel_entries_delivered_total{lane="10"}')).toBe(4);
    expect(sample(text, 'keel_delivered_bytes_total{lane="10"}')).toBe(1_024);
    expect(sample(text, 'keel_webhooks_total{outcome="BAD_SIGNATURE"}')).toBe(1);
    expect(sample(text, 'keel_awareness_forwarded_total')).toBe(3);
    expect(sample(text, 'keel_awareness_dropped_total{reason="TIER"}')).toBe(1);
    expect(sample(text, 'keel_devices_registered_total')).toBe(1);
    expect(sample(text, 'keel_devices_revoked_total')).toBe(1);
    expect(sample(text, 'keel_pairings_total{outcome="granted"}')).toBe(1);
    expect(sample(text, 'keel_tier_changes_total{to="premium"}')).toBe(1);
    expect(sample(text, 'keel_crisis_anomalies_total')).toBe(1);
    expect(sample(text, 'keel_crisis_e2e_latency_ms_count')).toBe(2);
    expect(sample(text, 'keel_crisis_e2e_latency_ms_bucket{le="20"}')).toBe(1);
    expect(sample(text, 'keel_crisis_sla_breaches_total')).toBe(1);
    expect(sample(text, 'keel_crisis_receipts_missing_total')).toBe(1);
    expect(sample(text, 'keel_alerts_total{kind="crisis_sla_breach"}')).toBe(1);
    expect(sample(text, 'keel_alerts_total{kind="crisis_volume_anomaly"}')).toBe(0);
    expect(sample(text, 'keel_lane_reports_total')).toBe(1);
    expect(sample(text, 'keel_http_refusals_total{area="webhook",code="BAD_SIGNATURE"}')).toBe(1);
    // Every other known code is there at 0.
    expect(sample(text, 'keel_http_refusals_total{area="admin",code="NOT_AUTHENTICATED"}')).toBe(0);
    expect(sample(text, 'keel_http_refusals_total{area="connection",code="REQUEST_TIMEOUT"}')).toBe(0);
    expect(sample(text, 'keel_crisis_e2e_latency_ms_bucket{le="20"}')).toBe(1);
    expect(sample(text, 'keel_crisis_e2e_latency_ms_bucket{le="10"}')).toBe(0);
    // No id of a user, device or document ever becomes a label.
    for (const id of [u1, d1, d2, doc]) expect(text).not.toContain(id);
  });

  it('reads queue depths from the probes at scrape time', async () => {
    const { metrics, probe } = setup();
    probe.work = 7;
    probe.lanes = [0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 2_048];
    let text = await metrics.render();
    expect(sample(text, 'keel_work_queue_tasks')).toBe(7);
    expect(sample(text, 'keel_outbound_queued_chars{lane="1"}')).toBe(100);
    expect(sample(text, 'keel_outbound_queued_chars{lane="10"}')).toBe(2_048);
    expect(sample(text, 'keel_outbound_queued_chars{lane="5"}')).toBe(0);
    probe.work = 0;
    text = await metrics.render();
    expect(sample(text, 'keel_work_queue_tasks')).toBe(0);
  });

  it('stop() unsubscribes: later events change nothing, and two relays in one process keep separate registries', async () => {
    const a = setup();
    const b = setup();
    a.connect(1);
    expect(sample(await b.metrics.render(), 'keel_connections')).toBe(0);
    a.metrics.stop();
    a.connect(2);
    expect(sample(await a.metrics.render(), 'keel_connections')).toBe(1);
    expect(a.events.has('connected')).toBe(false);
  });
});
