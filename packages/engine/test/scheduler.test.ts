import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import {
  DEFAULT_AGING_MS,
  DEFAULT_TIERS,
  Priority,
  SLA_MS,
  TIER_NAMES,
  asDocId,
  bulkRateBytesPerSec,
  createScheduler,
  isCrisisLane,
} from '@keel/engine';
import type { Dispatch, DocId, Scheduler, TierPolicy } from '@keel/engine';

const docIdOf = (i: number): DocId => asDocId(`doc_${String(i).padStart(43, '0')}`);

const createFakeClock = (start = 0) => {
  let t = start;
  return {
    now: () => t,
    set: (to: number) => {
      t = to;
    },
    advance: (ms: number) => {
      t += ms;
    },
  };
};

// ── simulation harness ────────────────────────────────────────────────────────────────────

/** A text edit on a document's Y.Text, in terms independent of its current length. */
interface Edit {
  readonly insertAt: number;
  readonly text: string;
  readonly deleteAt: number;
  readonly deleteLength: number;
}

interface SimWrite {
  /** Gap to the previous write (ms). */
  readonly gap: number;
  readonly doc: number;
  readonly priority: Priority;
  /** Ignored when the scenario uses real Yjs edits: the update's size is used instead. */
  readonly bytes: number;
  readonly edit?: Edit;
}

interface Scenario {
  readonly policy: TierPolicy;
  readonly docs: number;
  readonly writes: readonly SimWrite[];
  /** Round trip of every batch (ms). */
  readonly rttMs: number;
  /** Dispatch k comes back unsent (requeue) when drops[k]; later ones all arrive. */
  readonly drops: readonly boolean[];
  /** notBefore = now + backoff for a requeued batch. */
  readonly backoffMs: number;
  /** Empty: jump the clock to the next event. Otherwise advance by these steps, cycled. */
  readonly steps: readonly number[];
  readonly yjs: boolean;
}

interface Taken {
  readonly at: number;
  /** Index of the take() call that returned it, and its position in that call's result. */
  readonly call: number;
  readonly position: number;
  readonly dispatch: Dispatch;
  readonly writeIds: readonly number[];
  dropped: boolean;
  acked: boolean;
}

interface Trace {
  readonly taken: Taken[];
  /** Clock time each write happened at. */
  readonly writtenAt: number[];
  readonly updates: Uint8Array[];
  readonly sources: Y.Doc[];
  readonly scheduler: Scheduler;
}

/** The scheduler's send order: earliest deadline, then higher priority, then docId. */
const edfBefore = (a: Pick<Dispatch, 'docId' | 'deadline' | 'priority'>, b: Pick<Dispatch, 'docId' | 'deadline' | 'priority'>): boolean =>
  a.deadline !== b.deadline ? a.deadline < b.deadline : a.priority !== b.priority ? a.priority > b.priority : a.docId < b.docId;

const applyEdit = (doc: Y.Doc, edit: Edit): void => {
  const text = doc.getText('t');
  text.insert(edit.insertAt % (text.length + 1), edit.text);
  const at = edit.deleteAt % (text.length + 1);
  text.delete(at, Math.min(edit.deleteLength, text.length - at));
};

/**
 * Drives a scheduler on a fake clock the way the client will: write, take and "send", ack
 * after a round trip (or requeue a dropped batch), and sleep until nextWakeAt(). The harness
 * mirrors which writes each dispatch covers, as the client's outbox does, and checks the
 * invariants that must hold at every step.
 */
const simulate = (sc: Scenario): Trace => {
  const clock = createFakeClock();
  const scheduler = createScheduler({ clock, policy: sc.policy });
  const docIds = Array.from({ length: sc.docs }, (_, i) => docIdOf(i));
  const sources = docIds.map(() => new Y.Doc());
  const pendingIds = new Map<DocId, number[]>();
  /** The deferral of each pending group, as requeue() set it. */
  const notBefore = new Map<DocId, number>();
  const writtenAt: number[] = [];
  const updates: Uint8Array[] = [];
  const taken: Taken[] = [];
  const inFlight: { taken: Taken; ackAt: number }[] = [];
  const writeAt: number[] = [];
  let at = 0;
  for (const w of sc.writes) writeAt.push((at += w.gap));
  let next = 0;
  let calls = 0;
  let stepIndex = 0;

  for (let guard = 0; ; guard++) {
    if (guard > 200_000) throw new Error('simulation did not finish');
    const now = clock.now();
    const wake = scheduler.nextWakeAt();
    const events = [writeAt[next], wake, ...inFlight.map((f) => f.ackAt)].filter((t): t is number => t !== undefined);
    if (events.length === 0) break;
    const jumpTo = Math.min(...events);
    const moreWrites = next < writeAt.length;
    clock.set(sc.steps.length > 0 && moreWrites ? now + (sc.steps[stepIndex++ % sc.steps.length] ?? 1) : Math.max(now, jumpTo));
    const t = clock.now();

    // Round trips that are over, in send order.
    for (let i = 0; i < inFlight.length; ) {
      const f = inFlight[i];
      if (f === undefined || f.ackAt > t) {
        i++;
        continue;
      }
      inFlight.splice(i, 1);
      const d = f.taken.dispatch;
      if (f.taken.dropped) {
        scheduler.requeue(d, t + sc.backoffMs);
        notBefore.set(d.docId, Math.max(notBefore.get(d.docId) ?? -Infinity, t + sc.backoffMs));
        pendingIds.set(d.docId, [...f.taken.writeIds, ...(pendingIds.get(d.docId) ?? [])]);
      } else {
        f.taken.acked = true;
        scheduler.settle(d.docId);
      }
    }

    for (; next < writeAt.length && (writeAt[next] ?? 0) <= t; next++) {
      const w = sc.writes[next] as SimWrite;
      const docId = docIds[w.doc] as DocId;
      let bytes = w.bytes;
      if (sc.yjs && w.edit) {
        const source = sources[w.doc] as Y.Doc;
        const before = Y.encodeStateVector(source);
        applyEdit(source, w.edit);
        const update = Y.encodeStateAsUpdate(source, before);
        updates[next] = update;
        bytes = update.byteLength;
      }
      scheduler.write(docId, w.priority, bytes);
      if (isCrisisLane(w.priority)) notBefore.delete(docId);
      writtenAt[next] = t;
      pendingIds.set(docId, [...(pendingIds.get(docId) ?? []), next]);
    }

    const batch = scheduler.take();
    batch.forEach((dispatch, position) => {
      const ids = pendingIds.get(dispatch.docId) ?? [];
      pendingIds.delete(dispatch.docId);
      notBefore.delete(dispatch.docId);
      // The dispatch describes exactly the writes the outbox holds for the document.
      const bytesOf = (id: number) => (sc.yjs ? (updates[id]?.byteLength ?? 0) : (sc.writes[id]?.bytes ?? 0));
      expect(dispatch.writes).toBe(ids.length);
      expect(dispatch.bytes).toBe(ids.reduce((sum, id) => sum + bytesOf(id), 0));
      expect(dispatch.firstWriteAt).toBe(Math.min(...ids.map((id) => writtenAt[id] ?? Infinity)));
      expect(dispatch.priority).toBe(Math.max(...ids.map((id) => sc.writes[id]?.priority ?? 0)));
      const k = taken.length;
      const entry: Taken = { at: t, call: calls, position, dispatch, writeIds: ids, dropped: sc.drops[k] === true, acked: false };
      taken.push(entry);
      inFlight.push({ taken: entry, ackAt: t + sc.rttMs });
    });
    calls++;

    // (c) EDF without overtaking: no group still waiting was ready with an earlier key than
    // one just taken, whether the taken one got past it on tokens or on the cap.
    const takenBulk = batch.filter((d) => !isCrisisLane(d.priority));
    if (takenBulk.length > 0) {
      const latest = takenBulk.reduce((a, b) => (edfBefore(a, b) ? b : a));
      for (const [docId, ids] of pendingIds) {
        if (ids.length === 0) continue;
        const priority = Math.max(...ids.map((id) => sc.writes[id]?.priority ?? 0)) as Priority;
        if (isCrisisLane(priority)) continue;
        const firstWriteAt = Math.min(...ids.map((id) => writtenAt[id] ?? Infinity));
        const deadline = firstWriteAt + (SLA_MS[priority] ?? DEFAULT_AGING_MS);
        const readyAt = Math.max(notBefore.get(docId) ?? -Infinity, Math.min(firstWriteAt + sc.policy.batchWindowMs, deadline));
        if (readyAt <= t) expect(edfBefore({ docId, deadline, priority }, latest)).toBe(false);
      }
    }

    // (h) the concurrency cap, counted independently of the scheduler.
    const bulkInFlight = inFlight.filter((f) => !isCrisisLane(f.taken.dispatch.priority)).length;
    expect(scheduler.inFlight).toBe(bulkInFlight);
    expect(bulkInFlight).toBeLessThanOrEqual(sc.policy.maxConcurrent);
    // Liveness: after take() nothing more is takeable now, so the next wake is in the future.
    const after = scheduler.nextWakeAt();
    if (after !== undefined) expect(after).toBeGreaterThan(t);
    // (h) the only reason not to wake is the cap (or nothing pending).
    if (after === undefined && scheduler.pending > 0) expect(scheduler.inFlight).toBeGreaterThanOrEqual(sc.policy.maxConcurrent);
  }
  return { taken, writtenAt, updates, sources, scheduler };
};

// ── scenario generators ──────────────────────────────────────────────────────────────────

const priorityArb = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom(Priority.CRISIS_EMERGENCY, Priority.CRISIS_ASSESSMENT) },
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 8 }) as fc.Arbitrary<Priority> },
);
const policyArb = fc.constantFrom(...TIER_NAMES).map((name) => DEFAULT_TIERS[name]);
const editArb: fc.Arbitrary<Edit> = fc.record({
  insertAt: fc.nat(1000),
  text: fc.string({ minLength: 1, maxLength: 40 }),
  deleteAt: fc.nat(1000),
  deleteLength: fc.nat(6),
});

/**
 * Random scenarios. `pressure`: bursts of writes on the small tiers with slow round trips, so
 * the concurrency cap and the bucket are often what holds groups back.
 */
const scenarioArb = (opts: { yjs?: boolean; steps?: boolean; pressure?: boolean } = {}): fc.Arbitrary<Scenario> =>
  fc.integer({ min: 1, max: 8 }).chain((docs) =>
    fc.record({
      policy: opts.pressure ? fc.constantFrom(DEFAULT_TIERS.trial, DEFAULT_TIERS.basic) : policyArb,
      docs: fc.constant(docs),
      writes: fc.array(
        fc.record({
          gap: opts.pressure
            ? fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 300 }), fc.integer({ min: 0, max: 6_000 }))
            : fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 40_000 })),
          doc: fc.integer({ min: 0, max: docs - 1 }),
          priority: priorityArb,
          bytes: fc.oneof(fc.integer({ min: 0, max: 2_000 }), fc.integer({ min: 0, max: 120_000 })),
          edit: editArb,
        }),
        { minLength: 1, maxLength: 60, size: 'max' },
      ),
      rttMs: opts.pressure
        ? fc.integer({ min: 1_000, max: 10_000 })
        : fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 400 }), fc.integer({ min: 1_000, max: 8_000 })),
      drops: fc.oneof(fc.constant([] as boolean[]), fc.array(fc.boolean(), { minLength: 1, maxLength: 20 })),
      backoffMs: fc.integer({ min: 0, max: 3_000 }),
      steps: opts.steps ? fc.array(fc.integer({ min: 1, max: 5_000 }), { minLength: 1, maxLength: 8 }) : fc.constant([] as number[]),
      yjs: fc.constant(opts.yjs ?? false),
    }),
  );

const RUNS = { numRuns: 150 };

describe('scheduler properties (fake clock, seeded)', () => {
  it('(a) crisis groups are taken at the instant they are written, ahead of all non-crisis groups', () => {
    fc.assert(
      fc.property(fc.oneof(scenarioArb(), scenarioArb({ pressure: true })), (sc) => {
        const { taken, writtenAt } = simulate(sc);
        for (const t of taken) {
          if (!isCrisisLane(t.dispatch.priority)) continue;
          // Every non-crisis group of the same take() comes after it.
          const sameCall = taken.filter((o) => o.call === t.call && !isCrisisLane(o.dispatch.priority));
          for (const o of sameCall) expect(o.position).toBeGreaterThan(t.position);
        }
        sc.writes.forEach((w, id) => {
          if (!isCrisisLane(w.priority)) return;
          const first = taken.find((t) => t.writeIds.includes(id));
          expect(first?.at).toBe(writtenAt[id]);
          expect(first && isCrisisLane(first.dispatch.priority)).toBe(true);
        });
      }),
      { seed: 101, ...RUNS },
    );
  });

  it('(b) within the bandwidth budget and with prompt acks, every group leaves by its deadline', () => {
    // Budget: ≤ 100 bytes per write, ≥ 100 ms between writes, acks at once. Even trial's
    // 30 s window then holds at most ~30 KB < one second of its bulk rate (40 KiB).
    const budgetArb = fc.integer({ min: 1, max: 8 }).chain((docs) =>
      fc.record({
        policy: policyArb,
        docs: fc.constant(docs),
        docPriority: fc.array(fc.integer({ min: 1, max: 8 }) as fc.Arbitrary<Priority>, { minLength: docs, maxLength: docs }),
        writes: fc.array(
          fc.record({ gap: fc.integer({ min: 100, max: 20_000 }), doc: fc.integer({ min: 0, max: docs - 1 }), bytes: fc.integer({ min: 0, max: 100 }) }),
          { minLength: 1, maxLength: 80 },
        ),
      }),
    );
    fc.assert(
      fc.property(budgetArb, ({ policy, docs, docPriority, writes }) => {
        const sc: Scenario = {
          policy,
          docs,
          // A document's class fixes its priority.
          writes: writes.map((w) => ({ ...w, priority: docPriority[w.doc] ?? Priority.DEFERRED })),
          rttMs: 0,
          drops: [],
          backoffMs: 0,
          steps: [],
          yjs: false,
        };
        const { taken } = simulate(sc);
        expect(taken.length).toBeGreaterThan(0);
        for (const t of taken) {
          const expectedDeadline = t.dispatch.firstWriteAt + (SLA_MS[t.dispatch.priority] ?? DEFAULT_AGING_MS);
          expect(t.dispatch.deadline).toBe(expectedDeadline);
          expect(t.at).toBeLessThanOrEqual(t.dispatch.deadline);
          // And not before the batch window (or the deadline) let it go: writes coalesce.
          expect(t.at).toBeGreaterThanOrEqual(Math.min(t.dispatch.firstWriteAt + policy.batchWindowMs, t.dispatch.deadline));
        }
      }),
      { seed: 202, ...RUNS },
    );
  });

  /**
   * Continuous writes to `highDocs` higher-priority documents (bytes = load × bulk rate × gap)
   * with one priority-1 write of `lowBytes` at `lowAt`; returns how long after it was written
   * that write was taken. The load stops agingMs + 15 s after the low write, so a starved
   * write shows up as a long wait.
   */
  const measureLowPriorityWait = (p: {
    policy: TierPolicy;
    highDocs: number;
    load: number;
    gaps: readonly number[];
    priorities: readonly Priority[];
    lowAt: number;
    lowBytes: number;
    rttMs: number;
  }): number => {
    const rate = bulkRateBytesPerSec(p.policy) ?? Infinity;
    const writes: SimWrite[] = [];
    let t = 0;
    let k = 0;
    let lowPlaced = false;
    while (t < p.lowAt + DEFAULT_AGING_MS + 15_000) {
      const gap = p.gaps[k % p.gaps.length] ?? 100;
      if (!lowPlaced && t + gap > p.lowAt) {
        writes.push({ gap: p.lowAt - t, doc: p.highDocs, priority: Priority.DEFERRED, bytes: p.lowBytes });
        lowPlaced = true;
        t = p.lowAt;
        continue;
      }
      const doc = k % p.highDocs;
      writes.push({ gap, doc, priority: p.priorities[doc % p.priorities.length] ?? 4, bytes: Math.floor((rate * p.load * gap) / 1000) });
      t += gap;
      k++;
    }
    const sc: Scenario = { policy: p.policy, docs: p.highDocs + 1, writes, rttMs: p.rttMs, drops: [], backoffMs: 0, steps: [], yjs: false };
    const { taken, writtenAt } = simulate(sc);
    const lowId = writes.findIndex((w) => w.priority === Priority.DEFERRED);
    const low = taken.find((x) => x.writeIds.includes(lowId));
    return (low?.at ?? Infinity) - (writtenAt[lowId] ?? 0);
  };

  it('(c) nothing starves: under near-saturating bandwidth load a priority-1 write leaves within agingMs plus its transfer time', () => {
    // The higher-priority load uses 50–95 % of the bulk rate, so the bucket rarely fills; a
    // large priority-1 group (up to twice the bucket) would wait forever for a full bucket if
    // smaller, more urgent groups could always go first.
    const loadArb = fc.record({
      tier: fc.constantFrom('trial' as const, 'basic' as const, 'grace_period' as const),
      highDocs: fc.integer({ min: 2, max: 6 }),
      load: fc.double({ min: 0.5, max: 0.95, noNaN: true }),
      gaps: fc.array(fc.integer({ min: 10, max: 300 }), { minLength: 1, maxLength: 10 }),
      priorities: fc.array(fc.integer({ min: 2, max: 8 }) as fc.Arbitrary<Priority>, { minLength: 1, maxLength: 6 }),
      lowAt: fc.integer({ min: 0, max: 30_000 }),
      lowBytesOfCapacity: fc.double({ min: 0.01, max: 2, noNaN: true }),
      rttMs: fc.integer({ min: 1, max: 100 }),
    });
    fc.assert(
      fc.property(loadArb, (p) => {
        const policy = DEFAULT_TIERS[p.tier];
        const rate = bulkRateBytesPerSec(policy) ?? Infinity;
        const lowBytes = Math.ceil(rate * p.lowBytesOfCapacity);
        const wait = measureLowPriorityWait({ ...p, policy, lowBytes });
        // Transfer time: what the bucket must hold for it, min(bytes, capacity), at the rate.
        const transferMs = (Math.min(lowBytes, rate) / rate) * 1000;
        // Plus one round trip: when it comes due, the cap may be full of earlier batches.
        expect(wait).toBeLessThanOrEqual(DEFAULT_AGING_MS + transferMs + p.rttMs + 1);
      }),
      { seed: 303, numRuns: 25 },
    );
  });

  it('(c) nothing starves: with the concurrency cap always busy, a priority-1 write leaves soon after agingMs', () => {
    // Many urgent documents and a slow round trip keep every slot taken and a group always
    // ready; without aging a priority-1 group would never reach the front.
    const loadArb = fc.record({
      tier: fc.constantFrom('trial' as const, 'basic' as const, 'grace_period' as const),
      highDocs: fc.integer({ min: 4, max: 8 }),
      load: fc.double({ min: 0.05, max: 0.3, noNaN: true }),
      gaps: fc.array(fc.integer({ min: 10, max: 200 }), { minLength: 1, maxLength: 10 }),
      priorities: fc.array(fc.constantFrom(Priority.THERAPEUTIC_ACTIVE, Priority.PREMIUM_REALTIME, Priority.ASSESSMENT_DATA), { minLength: 1, maxLength: 4 }),
      lowAt: fc.integer({ min: 0, max: 30_000 }),
      lowBytesOfCapacity: fc.double({ min: 0.01, max: 1, noNaN: true }),
      rttMs: fc.integer({ min: 300, max: 1_500 }),
    });
    fc.assert(
      fc.property(loadArb, (p) => {
        const policy = DEFAULT_TIERS[p.tier];
        const rate = bulkRateBytesPerSec(policy) ?? Infinity;
        const lowBytes = Math.ceil(rate * p.lowBytesOfCapacity);
        const wait = measureLowPriorityWait({ ...p, policy, lowBytes });
        // When it comes due, at most one group per other document is due before it: it waits
        // for that many cap turns of one round trip each, and its own transfer time.
        const turns = Math.ceil((p.highDocs + 1) / policy.maxConcurrent);
        const transferMs = (Math.min(lowBytes, rate) / rate) * 1000;
        expect(wait).toBeLessThanOrEqual(DEFAULT_AGING_MS + turns * p.rttMs + transferMs + 1);
      }),
      { seed: 313, numRuns: 25 },
    );
  });

  it('(d) nothing accepted is lost: every write is acked in exactly one dispatch (event and random-step clocks)', () => {
    fc.assert(
      fc.property(fc.oneof(scenarioArb(), scenarioArb({ steps: true }), scenarioArb({ pressure: true })), (sc) => {
        const { taken, scheduler } = simulate(sc);
        const ackedIn = new Map<number, number>();
        for (const t of taken) if (t.acked) for (const id of t.writeIds) ackedIn.set(id, (ackedIn.get(id) ?? 0) + 1);
        expect(ackedIn.size).toBe(sc.writes.length);
        for (const count of ackedIn.values()) expect(count).toBe(1);
        expect(scheduler.pending).toBe(0);
        expect(scheduler.inFlight).toBe(0);
        expect(scheduler.nextWakeAt()).toBeUndefined();
      }),
      { seed: 404, ...RUNS },
    );
  });

  it('(e) merged dispatches rebuild every document byte for byte (real Yjs updates)', () => {
    fc.assert(
      fc.property(fc.oneof(scenarioArb({ yjs: true }), scenarioArb({ yjs: true, steps: true }), scenarioArb({ yjs: true, pressure: true })), (sc) => {
        const { taken, updates, sources } = simulate(sc);
        const replicas = sources.map(() => new Y.Doc());
        for (const t of taken) {
          if (!t.acked) continue;
          // The client seals one envelope per dispatch: all its writes merged into one update.
          const merged = Y.mergeUpdates(t.writeIds.map((id) => updates[id] as Uint8Array));
          const doc = Number(t.dispatch.docId.slice(4));
          Y.applyUpdate(replicas[doc] as Y.Doc, merged);
        }
        sources.forEach((source, i) => {
          expect(Y.encodeStateAsUpdate(replicas[i] as Y.Doc)).toEqual(Y.encodeStateAsUpdate(source));
          expect((replicas[i] as Y.Doc).getText('t').toString()).toBe(source.getText('t').toString());
        });
      }),
      { seed: 505, numRuns: 80 },
    );
  });

  it('(f) deterministic: the same seed gives the same dispatch sequence', () => {
    const run = (seed: number) =>
      fc
        .sample(scenarioArb({ steps: true }), { seed, numRuns: 20 })
        .map((sc) => simulate(sc).taken.map((t) => [t.at, t.dispatch.docId, t.dispatch.priority, t.dispatch.bytes, t.dispatch.writes, t.dispatch.deadline, t.acked]));
    const first = run(606);
    expect(run(606)).toEqual(first);
    expect(first.flat().length).toBeGreaterThan(0);
    expect(run(607)).not.toEqual(first);
  });

  it('(g) bandwidth: non-crisis bytes in any window ≤ rate × window + capacity (+ one oversized group)', () => {
    fc.assert(
      fc.property(fc.oneof(scenarioArb(), scenarioArb({ steps: true }), scenarioArb({ pressure: true })), (sc) => {
        const rate = bulkRateBytesPerSec(sc.policy);
        if (rate === null) return;
        const capacity = rate;
        const bulk = simulate(sc).taken.filter((t) => !isCrisisLane(t.dispatch.priority));
        for (let i = 0; i < bulk.length; i++) {
          let sum = 0;
          let largest = 0;
          for (let j = i; j < bulk.length; j++) {
            const b = bulk[j] as Taken;
            sum += b.dispatch.bytes;
            largest = Math.max(largest, b.dispatch.bytes);
            const window = b.at - (bulk[i] as Taken).at;
            expect(sum).toBeLessThanOrEqual((rate * window) / 1000 + capacity + Math.max(0, largest - capacity) + 1e-6);
          }
        }
      }),
      { seed: 707, ...RUNS },
    );
  });
});

// ── unit cases ───────────────────────────────────────────────────────────────────────────

describe('scheduler cases', () => {
  const A = docIdOf(1);
  const B = docIdOf(2);
  const C = docIdOf(3);

  it('coalesces a document\'s writes within the batch window into one dispatch', () => {
    const clock = createFakeClock(1_000);
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.basic });
    s.write(A, Priority.BASIC_FEATURES, 10);
    clock.advance(1_000);
    s.write(A, Priority.BASIC_FEATURES, 20);
    s.write(A, Priority.BACKGROUND_SYNC, 5);
    expect(s.take()).toEqual([]);
    expect(s.pending).toBe(1);
    expect(s.nextWakeAt()).toBe(6_000);
    clock.set(6_000);
    expect(s.take()).toEqual([{ docId: A, priority: 4, bytes: 35, firstWriteAt: 1_000, deadline: 6_000, writes: 3 }]);
    expect(s.inFlight).toBe(1);
    expect(s.pending).toBe(0);
    expect(s.nextWakeAt()).toBeUndefined();
    s.settle(A);
    expect(s.inFlight).toBe(0);
  });

  it('(i) setPolicy trial → premium makes a waiting check-in takeable at once', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.trial });
    s.write(A, Priority.BASIC_FEATURES, 100);
    clock.advance(100);
    expect(s.take()).toEqual([]);
    // On trial the check-in waits for its 5 s deadline (the 30 s window is longer).
    expect(s.nextWakeAt()).toBe(5_000);
    s.setPolicy(DEFAULT_TIERS.premium);
    expect(s.nextWakeAt()).toBe(100);
    expect(s.take().map((d) => d.docId)).toEqual([A]);
  });

  it('a crisis group bypasses window, bandwidth and the concurrency cap', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.trial });
    // Fill trial's cap of 2 and empty its bucket.
    s.write(A, Priority.BACKGROUND_SYNC, 60_000);
    s.write(B, Priority.BACKGROUND_SYNC, 10);
    clock.set(30_000);
    expect(s.take().map((d) => d.docId)).toEqual([A]); // B waits for tokens after oversized A
    s.write(C, Priority.MAINTENANCE, 10);
    clock.set(40_000);
    s.write(docIdOf(4), Priority.CRISIS_EMERGENCY, 1_000_000);
    expect(s.nextWakeAt()).toBe(40_000);
    const taken = s.take();
    expect(taken[0]).toMatchObject({ docId: docIdOf(4), priority: 10, bytes: 1_000_000, deadline: 40_200 });
    expect(taken.map((d) => d.docId)).toEqual([docIdOf(4), B]);
    // The crisis batch is not counted: A and B fill the cap.
    expect(s.inFlight).toBe(2);
    clock.set(40_001);
    s.write(docIdOf(5), Priority.CRISIS_ASSESSMENT, 5_000_000);
    expect(s.take().map((d) => d.docId)).toEqual([docIdOf(5)]);
    expect(s.inFlight).toBe(2);
    expect(s.pending).toBe(1); // C still waits for its window
  });

  it('an oversized group goes when the bucket is full and later groups wait for the refill', () => {
    const clock = createFakeClock();
    const policy: TierPolicy = { ...DEFAULT_TIERS.premium, bandwidthBytesPerSec: 1_000 };
    const s = createScheduler({ clock, policy, crisisReserveFraction: 0 });
    s.write(A, Priority.PREMIUM_REALTIME, 3_000);
    expect(s.take().map((d) => d.bytes)).toEqual([3_000]);
    s.write(B, Priority.PREMIUM_REALTIME, 500);
    expect(s.take()).toEqual([]);
    // Bucket at -2000; 500 tokens need 2.5 s.
    expect(s.nextWakeAt()).toBe(2_500);
    clock.set(2_499);
    expect(s.take()).toEqual([]);
    clock.set(2_500);
    expect(s.take().map((d) => d.docId)).toEqual([B]);
  });

  it('picks earliest deadline first, ties by priority then docId', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: { ...DEFAULT_TIERS.premium, maxConcurrent: 1 } });
    s.write(C, Priority.USER_PROFILE, 1); // deadline 2000
    s.write(B, Priority.ASSESSMENT_DATA, 1); // deadline 1000
    clock.set(500);
    s.write(A, Priority.PREMIUM_REALTIME, 1); // deadline 1000, higher priority than B
    const order: DocId[] = [];
    for (let i = 0; i < 3; i++) {
      const [d] = s.take();
      if (d) {
        order.push(d.docId);
        s.settle(d.docId);
      }
    }
    expect(order).toEqual([A, B, C]);
  });

  it('waits for the cap: nextWakeAt is undefined until a batch settles', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: { ...DEFAULT_TIERS.premium, maxConcurrent: 1 } });
    s.write(A, Priority.PREMIUM_REALTIME, 1);
    s.write(B, Priority.PREMIUM_REALTIME, 1);
    expect(s.take()).toHaveLength(1);
    expect(s.nextWakeAt()).toBeUndefined();
    expect(s.pending).toBe(1);
    s.settle(A);
    expect(s.nextWakeAt()).toBe(0);
    expect(s.take().map((d) => d.docId)).toEqual([B]);
  });

  it('pipelines: a write during a batch in flight starts a new group for the same document', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.premium });
    s.write(A, Priority.PREMIUM_REALTIME, 1);
    expect(s.take()).toHaveLength(1);
    s.write(A, Priority.PREMIUM_REALTIME, 2);
    expect(s.take()).toMatchObject([{ docId: A, bytes: 2, writes: 1 }]);
    expect(s.inFlight).toBe(2);
    s.settle(A);
    s.settle(A);
    s.settle(A); // a duplicate ack changes nothing
    expect(s.inFlight).toBe(0);
  });

  it('requeue merges a returned batch into the pending group and honours notBefore', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.premium });
    s.write(A, Priority.ASSESSMENT_DATA, 10);
    const [first] = s.take();
    clock.set(100);
    s.write(A, Priority.PREMIUM_REALTIME, 5);
    if (!first) throw new Error('expected a dispatch');
    s.requeue(first, 2_000);
    expect(s.inFlight).toBe(0);
    expect(s.pending).toBe(1);
    expect(s.take()).toEqual([]);
    expect(s.nextWakeAt()).toBe(2_000);
    clock.set(2_000);
    expect(s.take()).toEqual([{ docId: A, priority: 7, bytes: 15, firstWriteAt: 0, deadline: 500, writes: 2 }]);
  });

  it('a crisis write lifts a deferral on its document', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.basic });
    s.write(A, Priority.BASIC_FEATURES, 10);
    clock.set(5_000);
    const [d] = s.take();
    if (!d) throw new Error('expected a dispatch');
    s.requeue(d, 60_000);
    clock.set(6_000);
    s.write(A, Priority.CRISIS_ASSESSMENT, 3);
    expect(s.take()).toMatchObject([{ docId: A, priority: 9, bytes: 13, writes: 2 }]);
  });

  it('an escalated group whose new deadline has passed goes at once', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.premium });
    s.setPolicy({ ...DEFAULT_TIERS.premium, batchWindowMs: 20_000 });
    s.write(A, Priority.BACKGROUND_SYNC, 1);
    clock.set(3_000);
    expect(s.take()).toEqual([]);
    s.write(A, Priority.THERAPEUTIC_ACTIVE, 1);
    expect(s.take()).toMatchObject([{ docId: A, priority: 8, deadline: 500 }]);
  });

  it('a priority-1 write is aged: due agingMs after it was written', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: { ...DEFAULT_TIERS.premium, batchWindowMs: 1_000_000 }, agingMs: 60_000 });
    s.write(A, Priority.DEFERRED, 1);
    expect(s.nextWakeAt()).toBe(60_000);
  });

  it('rejects programming errors loudly', () => {
    const clock = createFakeClock();
    expect(() => createScheduler({ clock, policy: DEFAULT_TIERS.basic, crisisReserveFraction: 1 })).toThrow(RangeError);
    expect(() => createScheduler({ clock, policy: DEFAULT_TIERS.basic, agingMs: 0 })).toThrow(RangeError);
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.basic });
    expect(() => s.write(A, Priority.BASIC_FEATURES, -1)).toThrow(RangeError);
    expect(() => s.write(A, 11 as Priority, 1)).toThrow(RangeError);
    expect(s.pending).toBe(0);
  });

  it('stays fast with thousands of documents', () => {
    const clock = createFakeClock();
    const s = createScheduler({ clock, policy: DEFAULT_TIERS.basic });
    const docs = Array.from({ length: 5_000 }, (_, i) => docIdOf(i));
    const started = performance.now();
    let sent = 0;
    for (let i = 0; i < 50_000; i++) {
      clock.advance(1);
      s.write(docs[(i * 7919) % docs.length] as DocId, ((i % 8) + 1) as Priority, 200);
      for (const d of s.take()) {
        sent++;
        s.settle(d.docId);
      }
      s.nextWakeAt();
    }
    expect(sent).toBeGreaterThan(0);
    expect(performance.now() - started).toBeLessThan(5_000);
  });
});

describe('release', () => {
  it('lifts a notBefore so a parked group leaves at the next take()', async () => {
    const { createScheduler, DEFAULT_TIERS, asDocId } = await import('@keel/engine');
    let now = 1_000;
    const s = createScheduler({ clock: { now: () => now }, policy: DEFAULT_TIERS.premium });
    const doc = asDocId(`doc_${'a'.repeat(43)}`);
    s.write(doc, 7, 100);
    const [d] = s.take();
    expect(d?.docId).toBe(doc);
    s.requeue(d!, Number.POSITIVE_INFINITY);
    now += 60_000;
    expect(s.take()).toEqual([]);
    s.release(doc);
    expect(s.take().map((x) => x.docId)).toEqual([doc]);
  });
});
