import type { UserId } from '@keel/engine';
import type { TimerDeps } from '../entitlements/grace.js';
import type { RelayEvents } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import type { AuditDraft, RelayStore } from '../storage/relay-store.js';

/**
 * The ops this listener writes (docs/operations.md "The audit trail"). `audit report` reads them
 * back by these names, so they are one list.
 */
export const SyncAuditOp = {
  /** Envelopes of one document and lane became durable (outcome `committed`). */
  commit: 'sync.commit',
  /** Envelopes refused or deferred, counted (detail.count) per device, code and window (outcome: the code; detail.kind says which). */
  refused: 'sync.refused',
  /** Frames that failed their schema or came at the wrong time, counted (detail.count) per device, code and window. */
  badFrames: 'sync.bad-frames',
  /** Handshakes refused, counted (detail.count) per code and window: anyone can cause them. */
  authFailed: 'auth.failed',
  /** A device proved its key. */
  login: 'auth.login',
  deviceRegistered: 'device.register',
  deviceRevoked: 'device.revoke',
  /** Pairing steps, counted (detail.count) per outcome, code and window: a joiner is not authenticated. */
  pairing: 'pairing',
  /** A crisis-lane entry's receipt came (outcome `within_sla` or `breached`). */
  crisisReceipt: 'crisis.receipt',
  /** A connected device never confirmed a crisis-lane entry. */
  crisisMissing: 'crisis.receipt-missing',
  /** A device passed the crisis-lane volume threshold today. */
  crisisAnomaly: 'crisis.anomaly',
  /** A device reported an envelope above its document class's lane ceiling. */
  laneReport: 'lane.report',
  /** Rows this listener could not write and gave up (detail.count): the trail says it has a gap. */
  dropped: 'audit.dropped',
} as const;

export interface SyncAuditOptions {
  readonly events: RelayEvents;
  readonly store: Pick<RelayStore, 'appendAudit'>;
  readonly log: Logger;
  readonly timers: TimerDeps;
  /** How long a row may wait in memory before its batch is written. */
  readonly flushMs?: number;
  /** A batch this long is written on the next turn of the event loop, without waiting for `flushMs`. */
  readonly batchRows?: number;
  /**
   * Rows held at most. Reaching it writes at once, in the emitting call; if that write fails
   * (the disk is full, the database locked) the oldest rows past it are dropped, counted, logged
   * and recorded as an `audit.dropped` row once a write succeeds again.
   */
  readonly maxRows?: number;
  /** Distinct counters (auth failures, bad frames, refusals, pairing) held at most: reaching it writes at once. */
  readonly maxCounters?: number;
}

export interface SyncAudit {
  /** Writes what is queued now (tests; `close` does it too). */
  flush(): Promise<void>;
  /** Rows queued and counters not yet written. */
  pending(): number;
  /** Rows given up since the start (never silently: each loss is logged). */
  dropped(): number;
  /** Stops listening and writes everything queued; call before the store closes. */
  close(): Promise<void>;
}

interface Counter {
  readonly draft: Omit<AuditDraft, 'detail'> & { readonly detail: Record<string, string | number | boolean | null> };
  count: number;
}

/**
 * The audit trail of sync operations and security events: a listener on the relay's bus that
 * turns events into audit rows (pseudonymous only: the user through its keyed ref, devices and
 * documents as keyed refs via `refs`) and appends them in batches — every `flushMs` or
 * `batchRows` rows, whichever comes first, in one transaction. The emitter (the commit path)
 * only pushes to an array; it never waits for a write.
 *
 * Events anyone can cause without proving a key (auth failures, bad frames, pairing steps), and
 * refused envelopes, which a device can send as fast as it signs them, are counted per code (and
 * device) in the window and written as one row with a count, so a flood of them costs a bounded
 * number of rows per window, not one per frame.
 *
 * A crash loses the rows of the last window (≤ `flushMs`); a clean stop writes them (`close`).
 */
export const createSyncAudit = (options: SyncAuditOptions): SyncAudit => {
  const { events, store, log, timers } = options;
  const flushMs = options.flushMs ?? 250;
  const batchRows = options.batchRows ?? 512;
  const maxRows = options.maxRows ?? 20_000;
  const maxCounters = options.maxCounters ?? 4_096;
  let queue: AuditDraft[] = [];
  const counters = new Map<string, Counter>();
  let timer: unknown;
  let soon = false;
  /** Writes started and not finished (close waits for them). */
  const writes = new Set<Promise<void>>();
  let droppedTotal = 0;
  /** Dropped rows not yet recorded in the trail. */
  let droppedUnrecorded = 0;
  let closed = false;

  const schedule = (ms: number): void => {
    if (ms === 0 && !soon) {
      if (timer !== undefined) timers.clearTimeout(timer);
      soon = true;
      timer = timers.setTimeout(() => void flush(), 0);
    } else if (timer === undefined) {
      timer = timers.setTimeout(() => void flush(), ms);
    }
  };

  /** Puts rows a failed write gave back in front of the queue, dropping (counted, logged) the oldest past the bound. */
  const requeue = (rows: readonly AuditDraft[]): void => {
    queue = [...rows, ...queue];
    if (queue.length <= maxRows) return;
    const excess = queue.length - maxRows;
    queue.splice(0, excess);
    droppedTotal += excess;
    droppedUnrecorded += excess;
    log.log('error', 'audit rows dropped: the store is not taking writes and the queue is full', { rows: excess, total: droppedTotal });
  };

  /**
   * Takes what is queued (counters become rows) and appends it. Taking is synchronous, and the
   * SQLite store runs its transaction in the call, so a write's rows are ordered by when it was
   * started. A failed write gives its rows back for the next one.
   */
  const flush = (): Promise<void> => {
    if (timer !== undefined) timers.clearTimeout(timer);
    timer = undefined;
    soon = false;
    const batch = queue;
    queue = [];
    for (const { draft, count } of counters.values()) batch.push({ ...draft, detail: { ...draft.detail, count } });
    counters.clear();
    const recorded = droppedUnrecorded;
    if (recorded > 0) batch.push({ actor: 'relay', op: SyncAuditOp.dropped, userId: null, outcome: 'dropped', detail: { count: recorded } });
    if (batch.length === 0) return Promise.resolve();
    const write = (async () => {
      try {
        await store.appendAudit(batch, timers.now());
        droppedUnrecorded -= recorded;
      } catch (error) {
        const kept = recorded > 0 ? batch.slice(0, -1) : batch;
        log.log('error', 'audit write failed; rows kept for the next write', { rows: kept.length, error: error instanceof Error ? error.message : String(error) });
        requeue(kept);
        if (!closed) schedule(flushMs);
      }
    })();
    writes.add(write);
    void write.finally(() => writes.delete(write));
    return write;
  };

  const push = (draft: AuditDraft): void => {
    if (closed) return;
    queue.push(draft);
    // At the bound, write in this call rather than let the queue grow past it.
    if (queue.length >= maxRows) void flush();
    else if (queue.length >= batchRows) schedule(0);
    else schedule(flushMs);
  };

  const count = (key: string, draft: Counter['draft']): void => {
    if (closed) return;
    const existing = counters.get(key);
    if (existing) {
      existing.count++;
      return;
    }
    counters.set(key, { draft, count: 1 });
    // Many distinct keys (a flood from many devices or codes) write at once, like a full queue.
    if (counters.size >= maxCounters) void flush();
    else schedule(flushMs);
  };

  const at = (): number => timers.now();
  const relayRow = (op: string, userId: UserId | null, outcome: string, detail: AuditDraft['detail'], refs?: Record<string, string>): AuditDraft => ({
    actor: 'relay',
    op,
    userId,
    outcome,
    detail,
    ...(refs ? { refs } : {}),
    at: at(),
  });

  const offs = [
    events.on('committed', (c) =>
      push({
        actor: 'device',
        op: SyncAuditOp.commit,
        userId: c.user,
        outcome: 'committed',
        detail: { lane: c.lane, envelopes: c.envelopes, bytes: c.bytes, latencyMs: Math.round(c.latencyMs), tier: c.tier },
        refs: { device: c.device, doc: c.doc },
        at: at(),
      }),
    ),
    events.on('refused', (r) => {
      const refs = r.device === undefined ? undefined : { device: r.device };
      if (r.kind === 'bad-frame') {
        count(`bad ${r.user ?? '-'} ${r.device ?? '-'} ${r.code} ${r.frame}`, {
          actor: 'relay',
          op: SyncAuditOp.badFrames,
          userId: r.user ?? null,
          outcome: r.code,
          detail: { frame: r.frame },
          ...(refs ? { refs } : {}),
          at: at(),
        });
        return;
      }
      // A device can send refused envelopes as fast as it can sign them: counted like bad frames.
      count(`refused ${r.kind} ${r.user ?? '-'} ${r.device ?? '-'} ${r.code} ${r.frame}`, {
        actor: 'relay',
        op: SyncAuditOp.refused,
        userId: r.user ?? null,
        outcome: r.code,
        detail: { kind: r.kind, frame: r.frame },
        ...(refs ? { refs } : {}),
        at: at(),
      });
    }),
    events.on('authFailed', ({ code }) => count(`auth ${code}`, { actor: 'relay', op: SyncAuditOp.authFailed, userId: null, outcome: code, detail: {}, at: at() })),
    events.on('authenticated', (a) => push(relayRow(SyncAuditOp.login, a.user, 'authenticated', { tier: a.tier, newUser: a.newUser }, { device: a.device }))),
    events.on('deviceRegistered', (d) => push(relayRow(SyncAuditOp.deviceRegistered, d.user, 'registered', {}, { device: d.device }))),
    events.on('deviceRevoked', (d) => push(relayRow(SyncAuditOp.deviceRevoked, d.user, 'revoked', {}, { device: d.device }))),
    events.on('pairing', ({ outcome, code }) =>
      count(`pair ${outcome} ${code ?? '-'}`, { actor: 'relay', op: SyncAuditOp.pairing, userId: null, outcome, detail: { code: code ?? null }, at: at() }),
    ),
    events.on('crisisMeasured', (m) =>
      push(
        relayRow(SyncAuditOp.crisisReceipt, m.user, m.breached ? 'breached' : 'within_sla', { seq: m.seq, latencyMs: Math.round(m.latencyMs * 10) / 10, relayMs: Math.round(m.relayMs * 10) / 10, heldForCatchUp: m.heldForCatchUp }, { device: m.device, doc: m.doc }),
      ),
    ),
    events.on('crisisReceiptMissing', (m) =>
      push(relayRow(SyncAuditOp.crisisMissing, m.user, 'missing', { seq: m.seq, waitedMs: m.waitedMs }, { device: m.device, doc: m.doc })),
    ),
    events.on('crisisAnomaly', (m) => push(relayRow(SyncAuditOp.crisisAnomaly, m.user, 'anomaly', { bytes: m.bytes }, { device: m.device }))),
    events.on('laneReported', (r) =>
      push(relayRow(SyncAuditOp.laneReport, r.user, 'reported', { lane: r.lane }, { reporter: r.reporter, author: r.author, doc: r.doc })),
    ),
  ];

  return {
    flush,
    pending: () => queue.length + counters.size,
    dropped: () => droppedTotal,
    async close() {
      for (const off of offs) off();
      closed = true;
      await Promise.all(writes);
      await flush();
      // A write that failed above gave its rows back: one more try, then say what is lost.
      if (queue.length > 0) await flush();
      if (timer !== undefined) timers.clearTimeout(timer);
      timer = undefined;
      if (queue.length > 0) {
        droppedTotal += queue.length;
        log.log('error', 'audit rows dropped at shutdown: the store did not take them', { rows: queue.length, total: droppedTotal });
        queue = [];
      }
    },
  };
};
