import { type DeviceId, TIER_NAMES, type TierMatrix, isCrisisLane } from '@keel/engine';
import { ALERT_KINDS } from './alerts.js';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { HttpRefusalArea, RelayEvents } from '../events/relay-events.js';
import { ADMIN_UNAUTHENTICATED_REFUSALS, CONNECTION_REFUSALS, METRICS_REFUSALS } from '../server/http-codes.js';
import { UNAUTHENTICATED_REFUSALS } from '../webhooks/webhook-codes.js';

/** Milliseconds: from a crisis lane's 50 ms budget up to a stalled disk. */
const LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000];
/** Envelopes per group commit: powers of two up to the batch bound (1,024, server/commit-queue.ts). */
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024];
/** Seconds a connection lasted: a reconnect loop shows up in the first buckets, a healthy device in the last. */
const DURATION_BUCKETS_S = [1, 10, 60, 300, 1_800, 3_600, 6 * 3_600, 24 * 3_600];
/** Priority lanes (1 = bulk … 10 = crisis), each a label value from the start. */
const LANES = 10;

/** Gauges read at scrape time, from state the relay already keeps (nothing is counted on the hot path). */
export interface MetricsProbes {
  /** Work-queue tasks waiting or running. */
  workQueued(): number;
  /** Characters queued to devices and not yet handed to their sockets, per lane (index = lane). */
  outboundQueuedByLane(): readonly number[];
}

export interface RelayMetrics {
  /** The relay's own registry (never prom-client's global one: two relays in one process stay apart). */
  readonly registry: Registry;
  /** Prometheus text exposition format 0.0.4. */
  readonly contentType: string;
  render(): Promise<string>;
  /** Stops listening to the bus. */
  stop(): void;
}

export interface RelayMetricsDeps {
  readonly events: RelayEvents;
  readonly probes: MetricsProbes;
  /** The tier matrix in force: each committed operation is held to its tier's `maxResponseMs`. */
  readonly tiers: TierMatrix;
}

const HTTP_REFUSAL_CODES: Readonly<Record<HttpRefusalArea, readonly string[]>> = {
  connection: CONNECTION_REFUSALS,
  admin: ADMIN_UNAUTHENTICATED_REFUSALS,
  webhook: UNAUTHENTICATED_REFUSALS,
  metrics: METRICS_REFUSALS,
};

const laneClass = (lane: number): 'crisis' | 'bulk' => (isCrisisLane(lane) ? 'crisis' : 'bulk');

/**
 * Prometheus metrics fed by the relay's event bus. Labels come from fixed sets only (lanes,
 * error codes, frame types, tier names, outcomes), never ids: a metric must not tell who is
 * online, and label sets must not grow with traffic.
 */
export const createRelayMetrics = (deps: RelayMetricsDeps): RelayMetrics => {
  const { events, probes } = deps;
  const registry = new Registry();
  const registers = [registry];

  const connections = new Gauge({ name: 'keel_connections', help: 'Open WebSocket connections, authenticated or not.', registers });
  const authConnections = new Gauge({ name: 'keel_authenticated_connections', help: 'Connections that completed the handshake and are open.', registers });
  const authDevices = new Gauge({ name: 'keel_authenticated_devices', help: 'Distinct devices with at least one authenticated connection open.', registers });
  const authentications = new Counter({ name: 'keel_authentications_total', help: 'Handshakes that ended in ready, by tier.', labelNames: ['tier'], registers });
  const authFailures = new Counter({ name: 'keel_auth_failures_total', help: 'Handshakes refused, by error code.', labelNames: ['code'], registers });
  const disconnects = new Counter({ name: 'keel_disconnects_total', help: 'Connections closed, by WebSocket close code.', labelNames: ['code'], registers });
  const durations = new Histogram({
    name: 'keel_connection_duration_seconds',
    help: 'How long authenticated connections lasted, from accept to close (s).',
    buckets: DURATION_BUCKETS_S,
    registers,
  });

  const envelopes = new Counter({ name: 'keel_envelopes_committed_total', help: 'Envelopes made durable, by lane (resends excluded).', labelNames: ['lane'], registers });
  const committedBytes = new Counter({ name: 'keel_committed_bytes_total', help: 'Ciphertext bytes made durable, by lane.', labelNames: ['lane'], registers });
  const commitLatency = new Histogram({
    name: 'keel_commit_latency_ms',
    help: 'From a push frame read off the socket to its envelopes durable (ms), crisis or bulk lanes.',
    labelNames: ['class'],
    buckets: LATENCY_BUCKETS_MS,
    registers,
  });
  const batchSize = new Histogram({ name: 'keel_commit_batch_envelopes', help: 'Envelopes per group-commit transaction.', buckets: BATCH_BUCKETS, registers });
  const batchMs = new Histogram({ name: 'keel_commit_batch_ms', help: 'Duration of one group-commit transaction, fsync included (ms).', buckets: LATENCY_BUCKETS_MS, registers });

  const framesOut = new Counter({ name: 'keel_frames_delivered_total', help: 'updates/snapshot frames queued to devices, by lane.', labelNames: ['lane'], registers });
  const entriesOut = new Counter({ name: 'keel_entries_delivered_total', help: 'Log entries queued to devices, by lane.', labelNames: ['lane'], registers });
  const bytesOut = new Counter({ name: 'keel_delivered_bytes_total', help: 'Ciphertext bytes queued to devices, by lane.', labelNames: ['lane'], registers });

  const refusals = new Counter({
    name: 'keel_refusals_total',
    help: 'Frames and envelopes refused, by error code, frame type and kind (bad-frame, rejected, deferred).',
    labelNames: ['code', 'frame', 'kind'],
    registers,
  });
  const webhooks = new Counter({ name: 'keel_webhooks_total', help: 'Payment webhook deliveries answered, by outcome.', labelNames: ['outcome'], registers });
  const awarenessForwarded = new Counter({ name: 'keel_awareness_forwarded_total', help: 'Awareness frames queued to recipient devices.', registers });
  const awarenessDropped = new Counter({ name: 'keel_awareness_dropped_total', help: 'Awareness frames dropped, by reason.', labelNames: ['reason'], registers });
  const tierChanges = new Counter({ name: 'keel_tier_changes_total', help: 'Tier changes, by new tier.', labelNames: ['to'], registers });
  const registered = new Counter({ name: 'keel_devices_registered_total', help: 'Devices registered.', registers });
  const revoked = new Counter({ name: 'keel_devices_revoked_total', help: 'Devices revoked (cascades included).', registers });
  const pairings = new Counter({ name: 'keel_pairings_total', help: 'Pairing steps, by outcome.', labelNames: ['outcome'], registers });
  const anomalies = new Counter({ name: 'keel_crisis_anomalies_total', help: 'Users past the crisis-lane anomaly threshold, all their devices together (once per user per UTC day).', registers });
  const crisisE2e = new Histogram({
    name: 'keel_crisis_e2e_latency_ms',
    help: 'Crisis entries from their push read by the relay to the receiving device\'s receipt (ms): the crisis SLA, watched.',
    buckets: LATENCY_BUCKETS_MS,
    registers,
  });
  // Exposed at zero from the start, so alerts on it can be written before the first receipt.
  crisisE2e.zero({});
  const crisisBreaches = new Counter({ name: 'keel_crisis_sla_breaches_total', help: 'Crisis entries applied on a device more than 200 ms after their push reached the relay.', registers });
  const receiptsMissing = new Counter({ name: 'keel_crisis_receipts_missing_total', help: 'Crisis entries a connected device never confirmed within the receipt timeout.', registers });
  const alerts = new Counter({ name: 'keel_alerts_total', help: 'Operator alerts raised, by kind (each also an error log line, and a POST when configured).', labelNames: ['kind'], registers });
  for (const kind of ALERT_KINDS) alerts.inc({ kind }, 0);
  const crisisSignals = new Counter({ name: 'keel_crisis_signals_total', help: 'POST /crisis requests answered, by outcome (DELIVERED, DUPLICATE, or the refusal code).', labelNames: ['outcome'], registers });
  const laneReports = new Counter({ name: 'keel_lane_reports_total', help: 'Envelopes a device refused for a lane above its document class\'s ceiling (LANE_MISMATCH reports).', registers });
  const syncOps = new Counter({ name: 'keel_sync_operations_total', help: 'Sync operations committed (one per document and lane of a push), by the pushing device\'s tier.', labelNames: ['tier'], registers });
  const responseViolations = new Counter({
    name: 'keel_tier_response_violations_total',
    help: 'Sync operations that took longer than their tier\'s maxResponseMs from push read to durable, by tier.',
    labelNames: ['tier'],
    registers,
  });
  for (const tier of TIER_NAMES) {
    syncOps.inc({ tier }, 0);
    responseViolations.inc({ tier }, 0);
  }

  new Gauge({
    name: 'keel_work_queue_tasks',
    help: 'Work-queue tasks waiting or running (read at scrape).',
    registers,
    collect() {
      this.set(probes.workQueued());
    },
  });
  new Gauge({
    name: 'keel_outbound_queued_chars',
    help: 'Characters queued to devices and not yet in their sockets, by lane (read at scrape).',
    labelNames: ['lane'],
    registers,
    collect() {
      const byLane = probes.outboundQueuedByLane();
      for (let lane = 1; lane <= LANES; lane++) this.set({ lane: String(lane) }, byLane[lane] ?? 0);
    },
  });
  const httpRefusals = new Counter({
    name: 'keel_http_refusals_total',
    help: 'HTTP requests refused before they proved anything (slow, malformed, no token, bad webhook signature), by area and code.',
    labelNames: ['area', 'code'],
    registers,
  });
  // Every known code at 0 from the start, so a rate over it is defined before the first refusal.
  for (const [area, codes] of Object.entries(HTTP_REFUSAL_CODES)) for (const code of codes) httpRefusals.inc({ area, code }, 0);

  /** Authenticated connections per device, for the distinct-device gauge. */
  const perDevice = new Map<DeviceId, number>();

  const unsubscribe = [
    events.on('connected', () => connections.inc()),
    events.on('disconnected', ({ device, code, durationMs }) => {
      connections.dec();
      disconnects.inc({ code: String(code) });
      if (device === undefined) return;
      durations.observe(durationMs / 1000);
      authConnections.dec();
      const left = (perDevice.get(device) ?? 1) - 1;
      if (left > 0) perDevice.set(device, left);
      else perDevice.delete(device);
      authDevices.set(perDevice.size);
    }),
    events.on('authenticated', ({ device, tier }) => {
      authentications.inc({ tier });
      authConnections.inc();
      perDevice.set(device, (perDevice.get(device) ?? 0) + 1);
      authDevices.set(perDevice.size);
    }),
    events.on('authFailed', ({ code }) => authFailures.inc({ code })),
    events.on('refused', ({ code, frame, kind }) => refusals.inc({ code, frame, kind })),
    events.on('committed', ({ lane, envelopes: n, bytes, latencyMs, tier }) => {
      envelopes.inc({ lane: String(lane) }, n);
      committedBytes.inc({ lane: String(lane) }, bytes);
      commitLatency.observe({ class: laneClass(lane) }, latencyMs);
      syncOps.inc({ tier });
      if (latencyMs > deps.tiers[tier].maxResponseMs) responseViolations.inc({ tier });
    }),
    events.on('commitBatch', ({ envelopes: n, ms }) => {
      batchSize.observe(n);
      batchMs.observe(ms);
    }),
    events.on('delivered', ({ lane, entries, bytes }) => {
      framesOut.inc({ lane: String(lane) });
      entriesOut.inc({ lane: String(lane) }, entries);
      bytesOut.inc({ lane: String(lane) }, bytes);
    }),
    events.on('tierChanged', ({ to }) => tierChanges.inc({ to })),
    events.on('deviceRegistered', () => registered.inc()),
    events.on('deviceRevoked', () => revoked.inc()),
    events.on('pairing', ({ outcome }) => pairings.inc({ outcome })),
    events.on('webhook', ({ outcome }) => webhooks.inc({ outcome })),
    events.on('awarenessForwarded', ({ recipients }) => awarenessForwarded.inc(recipients)),
    events.on('awarenessDropped', ({ reason }) => awarenessDropped.inc({ reason })),
    events.on('crisisAnomaly', () => anomalies.inc()),
    events.on('httpRefused', ({ area, code }) => httpRefusals.inc({ area, code })),
    events.on('crisisMeasured', ({ latencyMs, breached }) => {
      crisisE2e.observe(latencyMs);
      if (breached) crisisBreaches.inc();
    }),
    events.on('crisisReceiptMissing', () => receiptsMissing.inc()),
    events.on('alert', ({ kind }) => alerts.inc({ kind })),
    events.on('laneReported', () => laneReports.inc()),
    events.on('crisisSignal', ({ outcome }) => crisisSignals.inc({ outcome })),
  ];

  return {
    registry,
    contentType: registry.contentType,
    render: () => registry.metrics(),
    stop() {
      for (const off of unsubscribe) off();
    },
  };
};
