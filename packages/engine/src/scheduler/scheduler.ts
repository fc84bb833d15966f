import { type Priority, SLA_MS, isCrisisLane } from '../policy/classes.js';
import type { TierPolicy } from '../policy/tiers.js';
import type { DocId } from '../protocol/ids.js';
import { type MinHeap, createMinHeap } from './heap.js';

/** The scheduler's only source of time (milliseconds; any epoch, never decreasing). */
export interface SchedulerClock {
  now(): number;
}

/** One document's coalesced writes, to be merged into one envelope and sent now. */
export interface Dispatch {
  readonly docId: DocId;
  /** Highest priority among the writes. */
  readonly priority: Priority;
  /** Sum of the writes' sizes as reported to `write` (bytes). */
  readonly bytes: number;
  /** Clock time of the earliest write in the group. */
  readonly firstWriteAt: number;
  /** When the group must leave the device: firstWriteAt + SLA of its priority (or aging). */
  readonly deadline: number;
  /** How many `write` calls the group covers. */
  readonly writes: number;
}

export interface SchedulerOptions {
  readonly clock: SchedulerClock;
  readonly policy: TierPolicy;
  /** Share of the tier's bandwidth kept free for crisis lanes, 0 ≤ f < 1. Default 0.2. */
  readonly crisisReserveFraction?: number;
  /** Longest a priority-1 (no SLA) write waits before it competes as due. Default 120 s. */
  readonly agingMs?: number;
}

export interface Scheduler {
  /**
   * Records a local write of `bytes` to `docId` at `clock.now()`. A crisis write turns the
   * document's whole pending group into a crisis group: it all goes at once.
   */
  write(docId: DocId, priority: Priority, bytes: number): void;
  /** The groups to seal and send now, in send order (crisis first); marks them in flight. */
  take(): Dispatch[];
  /**
   * The earliest time `take()` could return more; `undefined` when nothing is pending or the
   * only thing in the way is the concurrency cap (wait for `settle`/`requeue`).
   */
  nextWakeAt(): number | undefined;
  /** The relay acked (or finally refused) the oldest in-flight batch of `docId`. */
  settle(docId: DocId): void;
  /**
   * A dispatched batch came back unsent (link dropped, relay deferral): merges it into the
   * document's pending group, not eligible before `notBefore` (on every lane: the caller knows
   * the link is down; a later crisis write lifts it), and frees its in-flight slot.
   */
  requeue(dispatch: Dispatch, notBefore?: number): void;
  /** Lifts a `notBefore` on the document's pending group (the refusal that caused it is over). */
  release(docId: DocId): void;
  /** A tier change; the next `take()`/`nextWakeAt()` already uses it. */
  setPolicy(policy: TierPolicy): void;
  /** Non-crisis batches in flight. */
  readonly inFlight: number;
  /** Documents with a pending group. */
  readonly pending: number;
}

export const DEFAULT_CRISIS_RESERVE_FRACTION = 0.2;
export const DEFAULT_AGING_MS = 120_000;

/**
 * Bytes per second non-crisis work may use on `policy`: the tier's bandwidth less the crisis
 * reserve. `null`: unlimited.
 */
export const bulkRateBytesPerSec = (
  policy: TierPolicy,
  crisisReserveFraction: number = DEFAULT_CRISIS_RESERVE_FRACTION,
): number | null =>
  policy.bandwidthBytesPerSec === null ? null : policy.bandwidthBytesPerSec * (1 - crisisReserveFraction);

/** A document's pending writes. Mutable inside the scheduler only. */
interface Group {
  readonly docId: DocId;
  priority: Priority;
  bytes: number;
  firstWriteAt: number;
  writes: number;
  /** Set by `requeue`; -Infinity when the group may go at once. */
  notBefore: number;
  deadline: number;
  readyAt: number;
  /** Bumped whenever a key the heaps order by changes; older heap entries are then stale. */
  version: number;
  /** False once taken. */
  live: boolean;
}

/** A snapshot of a group's keys. Heaps never see keys change under them; stale ones are skipped. */
interface Entry {
  readonly group: Group;
  readonly version: number;
  readonly docId: DocId;
  readonly readyAt: number;
  readonly deadline: number;
  readonly priority: Priority;
}

const isStale = (entry: Entry): boolean => !entry.group.live || entry.version !== entry.group.version;

/** Earliest deadline first; ties: higher priority, then docId, so the order is total. */
const beforeByDeadline = (a: Entry, b: Entry): boolean =>
  a.deadline !== b.deadline ? a.deadline < b.deadline : a.priority !== b.priority ? a.priority > b.priority : a.docId < b.docId;

const beforeByReadyAt = (a: Entry, b: Entry): boolean => (a.readyAt !== b.readyAt ? a.readyAt < b.readyAt : a.docId < b.docId);

/** Crisis groups: emergency before assessment, then oldest first. */
const compareCrisis = (a: Group, b: Group): number =>
  b.priority - a.priority || a.firstWriteAt - b.firstWriteAt || (a.docId < b.docId ? -1 : a.docId > b.docId ? 1 : 0);

const sameBatch = (a: Dispatch, b: Dispatch): boolean =>
  a.docId === b.docId && a.priority === b.priority && a.bytes === b.bytes && a.firstWriteAt === b.firstWriteAt && a.writes === b.writes;

/**
 * Decides when each document's pending local writes leave the device. Per document, writes
 * coalesce into one group; crisis groups go at once, the rest earliest-deadline-first once
 * their batch window has passed (or their deadline comes), within a concurrency cap and a
 * token bucket for bandwidth. Pure: time comes from `options.clock` only.
 */
export const createScheduler = (options: SchedulerOptions): Scheduler => {
  const { clock } = options;
  const reserve = options.crisisReserveFraction ?? DEFAULT_CRISIS_RESERVE_FRACTION;
  const agingMs = options.agingMs ?? DEFAULT_AGING_MS;
  if (!(reserve >= 0 && reserve < 1)) throw new RangeError(`crisisReserveFraction must be in [0, 1), got ${reserve}`);
  if (!(agingMs > 0 && Number.isFinite(agingMs))) throw new RangeError(`agingMs must be a positive number, got ${agingMs}`);

  let policy = options.policy;
  const groups = new Map<DocId, Group>();
  const crisisGroups = new Map<DocId, Group>();
  /** Non-crisis groups whose readyAt may still be ahead. */
  const waiting = createMinHeap<Entry>(beforeByReadyAt);
  /** Non-crisis groups whose readyAt has passed, EDF order. */
  const ready = createMinHeap<Entry>(beforeByDeadline);
  /** Per document, its batches in flight, oldest first (acks come back in send order). */
  const inFlightByDoc = new Map<DocId, Dispatch[]>();
  let inFlightBulk = 0;

  // Token bucket for non-crisis bytes. Capacity is one second at the bulk rate.
  let rate = bulkRateBytesPerSec(policy, reserve);
  let capacity = rate ?? 0;
  let tokens = capacity;
  let tokensAt = clock.now();

  const tokensAtTime = (t: number): number =>
    rate === null ? Number.POSITIVE_INFINITY : Math.min(capacity, tokens + (Math.max(0, t - tokensAt) * rate) / 1000);

  const refill = (now: number): void => {
    tokens = tokensAtTime(now);
    tokensAt = Math.max(tokensAt, now);
  };

  /** A group larger than the bucket goes when the bucket is full, so it is never starved. */
  const tokensNeeded = (bytes: number): number => Math.min(bytes, capacity);

  /** Earliest time ≥ now at which the bucket holds enough for `bytes`. */
  const tokensReadyAt = (bytes: number, now: number): number => {
    if (rate === null) return now;
    const need = tokensNeeded(bytes);
    const have = tokensAtTime(now);
    if (have >= need) return now;
    let t = Math.ceil(now + ((need - have) * 1000) / rate);
    // Float rounding may leave the estimate a hair early; take() uses tokensAtTime too.
    while (tokensAtTime(t) < need) t += 1;
    return t;
  };

  const computeDeadline = (g: Group): number => g.firstWriteAt + (SLA_MS[g.priority] ?? agingMs);

  /** Recomputes a group's keys after a change and files it where take() looks for it. */
  const rekey = (g: Group): void => {
    g.version += 1;
    g.deadline = computeDeadline(g);
    if (isCrisisLane(g.priority)) {
      g.readyAt = g.notBefore;
      crisisGroups.set(g.docId, g);
      return;
    }
    g.readyAt = Math.max(g.notBefore, Math.min(g.firstWriteAt + policy.batchWindowMs, g.deadline));
    waiting.push({ group: g, version: g.version, docId: g.docId, readyAt: g.readyAt, deadline: g.deadline, priority: g.priority });
  };

  const promote = (now: number): void => {
    for (let top = waiting.peek(); top !== undefined; top = waiting.peek()) {
      if (isStale(top)) {
        waiting.pop();
        continue;
      }
      if (top.readyAt > now) return;
      waiting.pop();
      ready.push(top);
    }
  };

  const peekLive = (heap: MinHeap<Entry>): Entry | undefined => {
    for (let top = heap.peek(); top !== undefined; top = heap.peek()) {
      if (!isStale(top)) return top;
      heap.pop();
    }
    return undefined;
  };

  const dispatchGroup = (g: Group): Dispatch => {
    g.live = false;
    groups.delete(g.docId);
    crisisGroups.delete(g.docId);
    const dispatch: Dispatch = Object.freeze({
      docId: g.docId,
      priority: g.priority,
      bytes: g.bytes,
      firstWriteAt: g.firstWriteAt,
      deadline: g.deadline,
      writes: g.writes,
    });
    const list = inFlightByDoc.get(g.docId);
    if (list) list.push(dispatch);
    else inFlightByDoc.set(g.docId, [dispatch]);
    if (!isCrisisLane(g.priority)) inFlightBulk += 1;
    return dispatch;
  };

  const releaseInFlight = (docId: DocId, index: number): void => {
    const list = inFlightByDoc.get(docId);
    if (!list) return;
    const [removed] = list.splice(index, 1);
    if (list.length === 0) inFlightByDoc.delete(docId);
    if (removed && !isCrisisLane(removed.priority)) inFlightBulk -= 1;
  };

  const assertPriority = (priority: number): void => {
    if (!Number.isInteger(priority) || priority < 1 || priority > 10) throw new RangeError(`priority must be 1..10, got ${priority}`);
  };

  return {
    write(docId, priority, bytes) {
      assertPriority(priority);
      if (!(bytes >= 0 && Number.isFinite(bytes))) throw new RangeError(`bytes must be a finite number ≥ 0, got ${bytes}`);
      const now = clock.now();
      const g = groups.get(docId);
      if (g === undefined) {
        const fresh: Group = {
          docId,
          priority,
          bytes,
          firstWriteAt: now,
          writes: 1,
          notBefore: Number.NEGATIVE_INFINITY,
          deadline: 0,
          readyAt: 0,
          version: 0,
          live: true,
        };
        groups.set(docId, fresh);
        rekey(fresh);
        return;
      }
      g.bytes += bytes;
      g.writes += 1;
      let changed = false;
      if (priority > g.priority) {
        g.priority = priority;
        changed = true;
      }
      if (now < g.firstWriteAt) {
        g.firstWriteAt = now;
        changed = true;
      }
      // A crisis write goes at the instant it is written, even into a deferred group.
      if (isCrisisLane(priority) && g.notBefore > Number.NEGATIVE_INFINITY) {
        g.notBefore = Number.NEGATIVE_INFINITY;
        changed = true;
      }
      if (changed) rekey(g);
    },

    take() {
      const now = clock.now();
      refill(now);
      const out: Dispatch[] = [];
      if (crisisGroups.size > 0) {
        const due = [...crisisGroups.values()].filter((g) => g.notBefore <= now).sort(compareCrisis);
        for (const g of due) out.push(dispatchGroup(g));
      }
      promote(now);
      while (inFlightBulk < policy.maxConcurrent) {
        const head = peekLive(ready);
        // The EDF head keeps the bucket for itself: letting smaller later groups past it
        // could starve a large one forever.
        if (head === undefined || tokensAtTime(now) < tokensNeeded(head.group.bytes)) break;
        ready.pop();
        if (rate !== null) tokens -= head.group.bytes;
        out.push(dispatchGroup(head.group));
      }
      return out;
    },

    nextWakeAt() {
      if (groups.size === 0) return undefined;
      const now = clock.now();
      let wake = Number.POSITIVE_INFINITY;
      for (const g of crisisGroups.values()) wake = Math.min(wake, Math.max(now, g.notBefore));
      if (inFlightBulk < policy.maxConcurrent) {
        promote(now);
        const head = peekLive(ready);
        if (head !== undefined) wake = Math.min(wake, tokensReadyAt(head.group.bytes, now));
        const next = peekLive(waiting);
        if (next !== undefined) wake = Math.min(wake, next.readyAt);
      }
      return wake === Number.POSITIVE_INFINITY ? undefined : wake;
    },

    settle(docId) {
      // A duplicate or late ack for a batch already settled or requeued changes nothing.
      releaseInFlight(docId, 0);
    },

    requeue(dispatch, notBefore) {
      const list = inFlightByDoc.get(dispatch.docId);
      if (list) {
        let index = list.indexOf(dispatch);
        if (index < 0) index = list.findIndex((d) => sameBatch(d, dispatch));
        // Not in flight (already settled or requeued): still merged below, since dropping
        // the writes would lose data and resending them is harmless (Yjs updates are idempotent).
        if (index >= 0) releaseInFlight(dispatch.docId, index);
      }
      const defer = notBefore ?? Number.NEGATIVE_INFINITY;
      const g = groups.get(dispatch.docId);
      if (g === undefined) {
        const back: Group = {
          docId: dispatch.docId,
          priority: dispatch.priority,
          bytes: dispatch.bytes,
          firstWriteAt: dispatch.firstWriteAt,
          writes: dispatch.writes,
          notBefore: defer,
          deadline: 0,
          readyAt: 0,
          version: 0,
          live: true,
        };
        groups.set(back.docId, back);
        rekey(back);
        return;
      }
      g.priority = Math.max(g.priority, dispatch.priority) as Priority;
      g.bytes += dispatch.bytes;
      g.writes += dispatch.writes;
      g.firstWriteAt = Math.min(g.firstWriteAt, dispatch.firstWriteAt);
      g.notBefore = Math.max(g.notBefore, defer);
      rekey(g);
    },

    release(docId) {
      const g = groups.get(docId);
      if (g === undefined || g.notBefore === Number.NEGATIVE_INFINITY) return;
      g.notBefore = Number.NEGATIVE_INFINITY;
      rekey(g);
    },

    setPolicy(next) {
      refill(clock.now());
      const wasUnlimited = rate === null;
      const windowChanged = next.batchWindowMs !== policy.batchWindowMs;
      policy = next;
      rate = bulkRateBytesPerSec(policy, reserve);
      capacity = rate ?? 0;
      tokens = wasUnlimited ? capacity : Math.min(tokens, capacity);
      if (windowChanged) {
        // Every readyAt depends on the window: refile all non-crisis groups.
        waiting.clear();
        ready.clear();
        for (const g of groups.values()) if (!isCrisisLane(g.priority)) rekey(g);
      }
    },

    get inFlight() {
      return inFlightBulk;
    },

    get pending() {
      return groups.size;
    },
  };
};
