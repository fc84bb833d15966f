import { once } from 'node:events';
import type { Server } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { CloseCode, DEFAULT_TIERS, type DeviceId, type DocId, ErrorCode, type RelayId, type TierMatrix, type UserId, cryptoReady, isCrisisLane } from '@keel/engine';
import { type WebSocket, WebSocketServer } from 'ws';
import type { RelayConfig, ServingConfig } from '../config.js';
import { type Entitlements, createEntitlements } from '../entitlements/entitlements.js';
import { DEFAULT_GRACE_POLICY, type TimerDeps, systemTimers } from '../entitlements/grace.js';
import { createPaymentProcessor } from '../entitlements/payments.js';
import { createCrisisLane } from '../entitlements/crisis-lane.js';
import { createQuotaGuard } from '../entitlements/quota.js';
import { type ConnId, type RelayEvents, createRelayEvents } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import { createAwarenessCounts } from '../observe/awareness-counts.js';
import { createLogListener } from '../observe/log-listener.js';
import { createSyncAudit } from '../observe/sync-audit.js';
import { type RelayMetrics, createRelayMetrics } from '../observe/metrics.js';
import type { DeviceRecord, LogEntry, RelayStore } from '../storage/relay-store.js';
import { type AwarenessDrop, type AwarenessLimits, DEFAULT_AWARENESS_LIMITS } from './awareness-gate.js';
import { createCommitQueue } from './commit-queue.js';
import { createPairingRegistry } from './pairing.js';
import { resolveRelayId } from './relay-id.js';
import { type ConnectionContext, RelayConnection } from './connection.js';
import type { PairingPeer } from './device-admin.js';
import { createHttpServer } from './http-server.js';
import { type TlsLoad, readTlsCredentials, secureContextOptions } from './tls-credentials.js';
import { watchEventLoop } from './loop-watch.js';
import { createWorkQueue } from './work-queue.js';
import { createAddressLimiter } from './address-limits.js';
import { HttpErrorCode } from './http-codes.js';
import { addressKey } from './auth-failure-limiter.js';
import { type Alerter, createAlerter } from '../observe/alerts.js';
import { CRISIS_SLA_MS, watchCrisisSla } from '../observe/crisis-sla.js';
import { alertOnCrisis } from '../observe/operator-alerts.js';
import { CRISIS_SIGNAL_RETENTION_MS } from '../crisis/crisis-signals.js';
import { clientAddress } from './client-address.js';

/** How long shutting down waits for devices to answer the close handshake. */
const CLOSE_GRACE_MS = 1_000;

export interface RelayDeps {
  readonly config: RelayConfig;
  readonly store: RelayStore;
  readonly log: Logger;
  readonly now?: () => number;
  /** The tier matrix in force (operator overrides applied); docs/design.md's defaults otherwise. */
  readonly tiers?: TierMatrix;
  /** Clock and timers of grace periods; the system's unless a test injects fakes. */
  readonly timers?: TimerDeps;
  /** Awareness rates and the flood pause; the defaults (server/awareness-gate.ts) otherwise. */
  readonly awarenessLimits?: Partial<AwarenessLimits>;
}

export interface Relay {
  /** Bound address once listening (port 0 picks a free port). */
  readonly address: AddressInfo;
  readonly url: string;
  /** HTTP base URL (health, admin, webhooks). */
  readonly httpUrl: string;
  /** The id devices pin: configured, or generated at the first start and kept by the store. */
  readonly relayId: RelayId;
  readonly entitlements: Entitlements;
  /** The relay's event bus: listen here for connections, commits, refusals… (events/relay-events.ts). */
  readonly events: RelayEvents;
  /** The Prometheus metrics `GET /metrics` serves, and the crisis-receipt latency hook. */
  readonly metrics: RelayMetrics;
  /**
   * Awareness since the relay started: frames forwarded (one per recipient) and frames dropped,
   * by reason. Counts only, in memory: awareness itself is never stored or logged.
   */
  awarenessCounts(): { readonly forwarded: number; readonly dropped: Readonly<Record<AwarenessDrop, number>> };
  /**
   * Reads the certificate and key files again (after a renewal; the CLI does it on SIGHUP): new
   * connections get them, open ones keep theirs. Files that fail the start-up checks leave the
   * credentials in force unchanged. Not ok when the relay serves no TLS.
   */
  reloadTls(): TlsLoad;
  /** What became of operator alerts' POSTs since the start (the alerts themselves are counted on /metrics). */
  alertPosts(): ReturnType<Alerter['stats']>;
  /** Stops accepting, closes every socket (1001), waits for pending commits, closes the store. */
  close(): Promise<void>;
}

/** Starts a relay: HTTP (health) and WebSocket (sync) on one port. */
export const startRelay = async (deps: RelayDeps): Promise<Relay> => {
  await cryptoReady();
  const { store, log } = deps;
  const config: ServingConfig = { ...deps.config, relayId: await resolveRelayId(deps.config.relayId, store, log) };
  const now = deps.now ?? Date.now;
  // With a certificate the one port speaks HTTPS and WSS. Read and checked before anything else
  // starts, so a wrong file fails the start with its name rather than every handshake later.
  const tls = config.tlsCert !== undefined && config.tlsKey !== undefined ? readTlsCredentials(config.tlsCert, config.tlsKey) : undefined;
  if (tls && !tls.ok) throw new Error(tls.message);
  const events = createRelayEvents({ log, now });
  const commits = createCommitQueue(store, now, undefined, (envelopes, ms) => events.emit('commitBatch', { envelopes, ms }));
  const tiers = deps.tiers ?? DEFAULT_TIERS;
  const entitlements = createEntitlements(store, tiers, config.defaultTier, now);
  const quota = createQuotaGuard(store, now);
  const timers: TimerDeps = deps.timers ?? { ...systemTimers, now };
  const payments = createPaymentProcessor({
    store,
    entitlements,
    log,
    policy: {
      ...DEFAULT_GRACE_POLICY,
      baseMs: { basic: config.graceBasicMs, premium: config.gracePremiumMs },
      windowMs: config.graceWindowMs,
      floorMs: config.graceFloorMs,
    },
    priceTiers: config.priceTiers,
    timers,
  });
  const awarenessCounts = createAwarenessCounts(events);
  const logListener = createLogListener({ events, log, now });
  // The audit trail of sync operations and security events: batched, never awaited by ingest.
  const syncAudit = createSyncAudit({ events, store, log, timers });
  const byUser = new Map<UserId, Set<RelayConnection>>();
  const userOf = new Map<RelayConnection, UserId>();
  /** Each attached connection's device, kept past its teardown (when the connection no longer says). */
  const deviceOf = new Map<RelayConnection, DeviceId>();
  const all = new Set<RelayConnection>();
  /** Connections that have not authenticated (or paired) yet. */
  const unauthenticated = new Set<RelayConnection>();
  // The crisis SLA watch and operator alerts: listeners on the bus, off the hot path.
  const alerter = createAlerter({
    log,
    target: config.alertUrl !== undefined && config.alertSecret !== undefined ? { url: config.alertUrl, secret: config.alertSecret } : undefined,
    now,
    timers,
    count: (kind) => events.emit('alert', { kind }),
  });
  const sla = watchCrisisSla(events, { timers, slaMs: CRISIS_SLA_MS, missingAfterMs: config.crisisReceiptTimeoutMs });
  const stopAlerting = alertOnCrisis(events, alerter, { anomalyBytes: config.crisisAnomalyBytes });
  const crisis = createCrisisLane({
    anomalyBytes: config.crisisAnomalyBytes,
    ceilingBytes: config.crisisCeilingBytes,
    fastBurst: 64,
    fastPerSecond: 32,
    now,
    log,
    onAnomaly: (user, device, bytes) => events.emit('crisisAnomaly', { user, device, bytes }),
  });
  const work = createWorkQueue({
    onError: (error) => log.log('error', 'work queue task failed', { error: error instanceof Error ? error.message : String(error) }),
  });

  const context: ConnectionContext = {
    config,
    store,
    commits,
    entitlements,
    quota,
    crisis,
    work,
    log,
    events,
    now,
    attach(conn) {
      const user = conn.user!;
      let set = byUser.get(user);
      if (!set) byUser.set(user, (set = new Set()));
      if (set.size >= config.maxConnectionsPerUser) return false;
      userOf.set(conn, user);
      deviceOf.set(conn, conn.device!);
      set.add(conn);
      return true;
    },
    detach(conn) {
      const user = userOf.get(conn);
      const device = deviceOf.get(conn);
      userOf.delete(conn);
      deviceOf.delete(conn);
      if (!user) return;
      const set = byUser.get(user);
      set?.delete(conn);
      // The device's last connection: its cursors go from the other devices at once, not after 30 s.
      if (set && device && ![...set].some((other) => deviceOf.get(other) === device)) {
        for (const other of set) other.send({ type: 'awareness-gone', device }, 1);
        events.emit('deviceOffline', { user, device });
      }
      if (set?.size === 0) {
        byUser.delete(user);
        crisis.forgetUser(user);
      }
    },
    ready(conn, user) {
      // Signals kept for devices that were offline when they came; each device acts on a signal once.
      store
        .crisisSignals(user, now() - CRISIS_SIGNAL_RETENTION_MS)
        .then((signals) => {
          for (const signal of signals) conn.send({ type: 'crisis-signal', signal }, 10);
        })
        .catch((error: unknown) => log.log('error', 'kept crisis signals could not be read', { user, error: error instanceof Error ? error.message : String(error) }));
    },
    leftPreAuth(conn) {
      unauthenticated.delete(conn);
      leavePending(conn);
    },
    fanOut(origin: RelayConnection, docId: DocId, entries: readonly LogEntry[], readAt: number) {
      const user = userOf.get(origin);
      if (!user) return;
      // Timed from the push's read off the socket: the relay's own commit is part of the SLA.
      const crisisEntries = entries.filter((e) => isCrisisLane(e.env.lane)).map((e) => ({ seq: e.seq, receivedAt: readAt }));
      for (const conn of byUser.get(user) ?? []) {
        if (conn === origin) continue;
        const watched = crisisEntries.length > 0 && conn.device !== undefined && conn.device !== origin.device && conn.isSubscribed(docId);
        const live = conn.deliver(docId, entries);
        // Told in the same turn as the delivery: no receipt can be read in between.
        if (watched) events.emit('crisisFannedOut', { user, device: conn.device!, doc: docId, entries: crisisEntries, live });
      }
    },
    receipt(origin, frame) {
      const user = userOf.get(origin);
      if (user && origin.device !== undefined) events.emit('receipt', { user, device: origin.device, doc: frame.doc, seqs: frame.seqs });
    },
    report(origin, frame) {
      const user = userOf.get(origin);
      if (user && origin.device !== undefined) events.emit('laneReported', { user, reporter: origin.device, author: frame.device, doc: frame.doc, lane: frame.lane });
    },
    awarenessLimits: { ...DEFAULT_AWARENESS_LIMITS, ...deps.awarenessLimits },
    forwardAwareness(origin, doc, frame) {
      const user = userOf.get(origin);
      if (!user) return;
      let recipients = 0;
      for (const conn of byUser.get(user) ?? []) {
        // Not to the sender's device: its other connections (a reconnect overlapping) hold the states already.
        if (conn === origin || conn.device === origin.device || !conn.isSubscribed(doc)) continue;
        const dropped = conn.offerAwareness(frame);
        if (dropped) events.emit('awarenessDropped', { reason: dropped });
        else recipients++;
      }
      if (recipients > 0) events.emit('awarenessForwarded', { recipients });
    },
    announceDevice(origin: RelayConnection, device: DeviceRecord) {
      for (const conn of byUser.get(device.userId) ?? []) if (conn !== origin) conn.send({ type: 'device', cert: device.cert }, 10);
    },
    pairings: createPairingRegistry<PairingPeer>(now),
    toUser(user, frame, lane, except) {
      for (const conn of byUser.get(user) ?? []) if (conn !== except) conn.send(frame, lane);
    },
    cutOffDevice(user, device, notice) {
      // Closing takes a connection out of the set being iterated, which a Set allows.
      for (const conn of byUser.get(user) ?? []) if (conn.device === device) conn.cutOff(notice);
    },
    devicesRevoked(user, notices) {
      // In order: a device that waits for the last one's frame has seen all the others.
      for (const notice of notices) {
        context.cutOffDevice(user, notice.device, notice);
        context.toUser(user, notice, 10);
      }
    },
  };

  // A tier change reaches every online device of the user at once.
  entitlements.onChange((userId, state) => {
    const online = byUser.get(userId) ?? new Set<RelayConnection>();
    const from = [...online].find((conn) => conn.tierName !== undefined)?.tierName;
    for (const conn of online) conn.setTier(state);
    events.emit('tierChanged', { user: userId, ...(from !== undefined ? { from } : {}), to: state.name });
  });

  let closing: Promise<void> | undefined;
  const metrics = createRelayMetrics({
    events,
    tiers,
    probes: {
      workQueued: () => work.size,
      outboundQueuedByLane() {
        const byLane: number[] = [];
        for (const conn of all) conn.addQueuedCharsByLane(byLane);
        return byLane;
      },
    },
  });

  // Health, readiness, metrics, admin and webhook routes (over HTTPS with a certificate), with the HTTP timeouts; WebSocket upgrades stay here.
  const http: Server = createHttpServer({
    config,
    store,
    log,
    now,
    entitlements,
    payments,
    events,
    metrics,
    serving: () => closing === undefined,
    deliverCrisisSignal(user, signal) {
      const devices = new Set<DeviceId>();
      for (const conn of byUser.get(user) ?? []) {
        conn.send({ type: 'crisis-signal', signal }, 10);
        if (conn.device !== undefined) devices.add(conn.device);
      }
      return devices.size;
    },
    ...(tls ? { tls: tls.credentials } : {}),
  });

  const addresses = createAddressLimiter(
    { connectBurst: config.addressConnectBurst, connectPerSecond: config.addressConnectPerSecond, maxPendingPerAddress: config.maxPendingPerAddress, maxAddresses: 100_000 },
    now,
  );
  /** The address each unauthenticated connection counts against, until it leaves that state. */
  const pendingAddress = new Map<RelayConnection, string>();
  const leavePending = (conn: RelayConnection): void => {
    const address = pendingAddress.get(conn);
    if (address === undefined) return;
    pendingAddress.delete(conn);
    addresses.leftPending(address);
  };
  const wss = new WebSocketServer({
    server: http,
    maxPayload: config.maxPayloadBytes,
    perMessageDeflate: false,
    // Before the upgrade: a flooding address is answered 429 for the price of a header parse.
    verifyClient: (info, done) => {
      const address = addressKey(clientAddress(info.req, config.trustedProxy));
      const refused = addresses.admit(address);
      if (!refused) return done(true);
      events.emit('httpRefused', { area: 'connection', code: refused === 'RATE' ? HttpErrorCode.ADDRESS_RATE_LIMITED : HttpErrorCode.ADDRESS_PENDING_LIMIT });
      done(false, 429, 'Too Many Requests', { 'retry-after': String(addresses.retryAfterSeconds(address)) });
    },
  });
  const alive = new WeakSet<WebSocket>();
  let nextConn: ConnId = 0;
  wss.on('connection', (ws, req) => {
    const address = addressKey(clientAddress(req, config.trustedProxy));
    // Unauthenticated sockets cost little each (a few KiB, one handshake step at a time) but
    // are free to open, so their number is bounded too.
    if (unauthenticated.size >= config.maxPendingConnections) {
      ws.send(JSON.stringify({ type: 'error', code: ErrorCode.OVERLOADED, message: 'too many unauthenticated connections; retry later' }), () =>
        ws.close(CloseCode.TRY_AGAIN_LATER, ErrorCode.OVERLOADED),
      );
      setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref();
      addresses.leftPending(address);
      return;
    }
    const id = ++nextConn;
    events.emit('connected', { conn: id });
    const conn = new RelayConnection(ws, context, id);
    unauthenticated.add(conn);
    pendingAddress.set(conn, address);
    all.add(conn);
    alive.add(ws);
    ws.on('pong', () => alive.add(ws));
    ws.on('close', () => {
      all.delete(conn);
      leavePending(conn);
    });
  });
  // A device that vanished without a FIN (phone into a tunnel) misses a pong and is dropped.
  const heartbeat = setInterval(() => {
    for (const ws of wss.clients) {
      if (!alive.has(ws)) {
        ws.terminate();
        continue;
      }
      alive.delete(ws);
      ws.ping();
    }
  }, config.heartbeatMs);
  heartbeat.unref();
  const loop = watchEventLoop(log);
  wss.on('error', (error) => log.log('error', 'websocket server error', { error: error.message }));

  // Open grace periods resume (or end, if their time passed while the relay was down) before traffic.
  await payments.start();
  http.listen(config.port, config.host);
  await once(http, 'listening');
  const address = http.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  log.log('info', 'listening', {
    host: address.address,
    port: address.port,
    relay: config.relayId,
    tls: tls !== undefined,
    ...(tls ? { certificateExpires: new Date(tls.credentials.validTo).toISOString() } : {}),
  });
  const scheme = tls ? { ws: 'wss', http: 'https' } : { ws: 'ws', http: 'http' };

  return {
    address,
    url: `${scheme.ws}://${host}:${address.port}`,
    httpUrl: `${scheme.http}://${host}:${address.port}`,
    relayId: config.relayId,
    entitlements,
    events,
    metrics,
    awarenessCounts: () => awarenessCounts.snapshot(),
    alertPosts: () => alerter.stats(),
    reloadTls() {
      if (!tls || config.tlsCert === undefined || config.tlsKey === undefined) {
        return { ok: false, message: 'this relay serves no TLS (--tls-cert, --tls-key): nothing to reload' };
      }
      const loaded = readTlsCredentials(config.tlsCert, config.tlsKey);
      if (!loaded.ok) {
        log.log('error', 'tls reload failed; the certificate in force stays', { error: loaded.message });
        return loaded;
      }
      (http as unknown as HttpsServer).setSecureContext(secureContextOptions(loaded.credentials));
      log.log('info', 'tls certificate reloaded', { certificateExpires: new Date(loaded.credentials.validTo).toISOString() });
      return loaded;
    },
    close() {
      closing ??= (async () => {
        clearInterval(heartbeat);
        loop.stop();
        for (const conn of all) conn.close(CloseCode.GOING_AWAY, 'relay shutting down');
        // ws emits 'close' only once every client is gone: give the close handshakes a moment,
        // then cut whatever is left instead of waiting out ws's 30 s close timeout.
        const closed = new Promise<void>((resolve) => wss.close(() => resolve()));
        const grace = setTimeout(() => {
          for (const client of wss.clients) client.terminate();
        }, CLOSE_GRACE_MS);
        await closed;
        clearTimeout(grace);
        http.closeAllConnections();
        await new Promise<void>((resolve) => http.close(() => resolve()));
        await payments.close();
        sla.stop();
        stopAlerting();
        // Alerts already raised get their chance to be posted (each POST times out), then the rest is dropped.
        await Promise.race([alerter.idle(), new Promise((resolve) => setTimeout(resolve, 2_000).unref())]);
        alerter.close();
        await work.idle();
        await commits.idle();
        // Every queued audit row is written before the store closes.
        await syncAudit.close();
        await store.close();
        metrics.stop();
        awarenessCounts.stop();
        logListener.stop();
        log.log('info', 'stopped', { relay: config.relayId });
      })();
      return closing;
    },
  };
};
