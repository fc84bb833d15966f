import {
  type DocId,
  type Envelope,
  type EnvelopeKind,
  ErrorCode,
  type KeelError,
  type PushFrame,
  type RawFrame,
  type Seq,
  type TierName,
  type TierPolicy,
  type UserId,
  b64ByteLength,
  isCrisisLane,
  validateClientFrame,
} from '@keel/engine';
import type { DeviceVerifier } from '../auth/ed25519.js';
import type { CrisisLane } from '../entitlements/crisis-lane.js';
import type { QuotaGuard, QuotaRefusal } from '../entitlements/quota.js';
import type { RelayEvents } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import type { AppendRequest, DeviceRecord, LogEntry, RelayStore } from '../storage/relay-store.js';
import type { CommitQueue } from './commit-queue.js';
import type { Task, TaskResult, WorkOwner, WorkQueue } from './work-queue.js';

/** Envelopes checked in one work-queue step, and the most ciphertext (characters) one step may check. */
const STEP_ENVELOPES = 16;
const STEP_CHARS = 256 * 1024;
/** A crisis push this small may take the immediate path (see CrisisLane.takeFastPath). */
const FAST_ENVELOPES = 8;
const FAST_CHARS = 256 * 1024;
/** Documents whose deferral one connection remembers; the oldest is forgotten past this. */
const MAX_DEFERRED_DOCS = 1024;

export interface IngestDeps {
  readonly store: RelayStore;
  readonly commits: CommitQueue;
  readonly quota: QuotaGuard;
  readonly crisis: CrisisLane;
  readonly work: WorkQueue;
  /**
   * Tasks of this connection in the work queue that only read the log (catch-up): a crisis push
   * may overtake them, since reads need no order with writes. Devices ask for catch-up after
   * every ack (to see their envelope in the log), so counting them would close the fast path.
   */
  readonly readsQueued: () => number;
  readonly owner: WorkOwner;
  readonly log: Logger;
  /** `committed` is told here, once envelopes are durable. */
  readonly events: RelayEvents;
  readonly now: () => number;
  readonly snapshotRetentionMs: number;
  readonly user: UserId;
  readonly device: DeviceRecord;
  readonly verifier: DeviceVerifier;
  /** The tier enforced now (it changes while the connection lives). */
  policy(): TierPolicy;
  /** The name of the tier enforced now (for the `committed` event: response time is promised per tier). */
  tierName(): TierName;
  ack(acks: { doc: DocId; counter: number; seq: Seq; kind?: 'snapshot' }[], lane: number): void;
  reject(doc: DocId, counter: number, error: QuotaRefusal, kind?: EnvelopeKind): void;
  /** A frame that did not validate (counts against the bad-frame budget). */
  badFrame(error: KeelError): void;
  /** Something an honest device never sends (a forged signature, another device's envelope). */
  abuse(): void;
  /** Newly stored entries, for the user's other connections. */
  /** Newly stored entries of a document, and when the push that carried them was read off the socket. */
  stored(docId: DocId, entries: readonly LogEntry[], readAt: number): void;
  internal(error: unknown): void;
}

/** A metered reservation, given back if its envelope is not stored. */
interface Meter {
  readonly day: string;
  readonly bytes: number;
  readonly crisis: boolean;
}

interface Accepted {
  readonly request: AppendRequest;
  readonly meter: Meter;
}

/** Whether an unvalidated push names a crisis lane for any envelope (full validation follows). */
const claimsCrisisLane = (raw: RawFrame): boolean => {
  const envs = raw.json.envs;
  return Array.isArray(envs) && envs.some((env: unknown) => typeof env === 'object' && env !== null && Number((env as { lane?: unknown }).lane) >= 9);
};

const envelopeCount = (raw: RawFrame): number => (Array.isArray(raw.json.envs) ? raw.json.envs.length : 0);

/**
 * One connection's pushes: validated, checked and committed in bounded steps of the work queue
 * (crisis-lane pushes in its urgent class), so a frame of 512 large envelopes costs the event
 * loop one step at a time. Per envelope, cheapest check first: author, quota, then the counter
 * against the log — a resend or a counter that does not fit is answered by the store without a
 * signature check, so replaying a signed frame costs the relay almost nothing — and only a new
 * counter pays for Ed25519.
 */
export class Ingest {
  readonly #deps: IngestDeps;
  /** Highest counter per document verified and sent to commit, not yet committed. */
  readonly #inflight = new Map<DocId, number>();
  /**
   * Documents deferred on this connection, until when: later envelopes of the document (the
   * next frame, the next parts of a split update) are deferred with the first instead of
   * arriving behind a hole and being refused as gaps.
   */
  readonly #deferredUntil = new Map<DocId, { readonly until: number; readonly refusal: QuotaRefusal }>();

  /** The push on the immediate path still being admitted, if any. */
  #fast: Promise<void> | undefined;

  constructor(deps: IngestDeps) {
    this.#deps = deps;
  }

  /** A push frame as read off the socket (JSON parsed, type known, not validated). */
  onPush(raw: RawFrame, chars: number): void {
    const { work, owner } = this.#deps;
    const crisis = claimsCrisisLane(raw);
    // When the frame came off the socket: `committed` reports the time from here to durable.
    const readAt = this.#deps.now();
    if (
      crisis &&
      this.#fast === undefined &&
      work.pending(owner) - this.#deps.readsQueued() === 0 &&
      chars <= FAST_CHARS &&
      envelopeCount(raw) <= FAST_ENVELOPES &&
      this.#deps.crisis.takeFastPath(this.#deps.user, envelopeCount(raw))
    ) {
      // The immediate path: verified and committed now, ahead of everything queued.
      const fast = this.#runNow(this.#job(raw, true, readAt))
        .catch((error: unknown) => this.#deps.internal(error))
        .finally(() => {
          if (this.#fast === fast) this.#fast = undefined;
        });
      this.#fast = fast;
      return;
    }
    work.enqueue(owner, this.#behindFast(this.#job(raw, crisis, readAt)), crisis ? 'urgent' : 'normal');
  }

  /**
   * Runs a push at once, outside the queue, to the end: it is small (FAST_ENVELOPES, FAST_CHARS),
   * so its steps are bounded — validation and one step per envelope at worst.
   */
  async #runNow(job: Task): Promise<void> {
    for (let steps = 0; steps <= FAST_ENVELOPES + 1; steps++) {
      if ((await job()) !== 'again') return;
    }
  }

  /**
   * A push that arrived while one on the immediate path is still being admitted waits for it:
   * pushes of a connection are admitted in the order they arrived, or a later counter would
   * overtake an earlier one and be refused as a gap.
   */
  #behindFast(job: Task): Task {
    let ahead = this.#fast;
    return async () => {
      if (ahead) {
        await ahead;
        ahead = undefined;
      }
      return job();
    };
  }

  /** The bounded steps of one push: validation, then envelopes in slices. */
  #job(raw: RawFrame, urgent: boolean, readAt: number): Task {
    let frame: PushFrame | undefined;
    let index = 0;
    // Once one envelope of a document is deferred, later ones of that document in this frame
    // are deferred with it: they must not overtake it, and a counter gap would be misleading.
    const deferred = new Map<DocId, QuotaRefusal>();
    return async (): Promise<TaskResult> => {
      if (!frame) {
        const parsed = validateClientFrame(raw);
        if (!parsed.ok) {
          this.#deps.badFrame(parsed.error);
          return;
        }
        if (parsed.value.type !== 'push') return;
        frame = parsed.value;
        return 'again';
      }
      const policy = this.#deps.policy();
      const accepted: Accepted[] = [];
      const snapshots: Accepted[] = [];
      let chars = 0;
      const end = Math.min(frame.envs.length, index + STEP_ENVELOPES);
      while (index < end && (chars === 0 || chars + frame.envs[index]!.ct.length <= STEP_CHARS)) {
        const env = frame.envs[index++]!;
        chars += env.ct.length;
        await this.#admit(env, policy, deferred, accepted, snapshots);
      }
      if (snapshots.length > 0) this.#storeSnapshots(snapshots, policy).catch((error: unknown) => this.#deps.internal(error));
      if (accepted.length > 0) this.#commit(accepted, policy, urgent, readAt).catch((error: unknown) => this.#deps.internal(error));
      return index < frame.envs.length ? 'again' : undefined;
    };
  }

  async #admit(env: Envelope, policy: TierPolicy, deferred: Map<DocId, QuotaRefusal>, accepted: Accepted[], snapshots: Accepted[]): Promise<void> {
    const { user, device, store } = this.#deps;
    let error: QuotaRefusal | undefined = deferred.get(env.doc) ?? this.#stillDeferred(env.doc);
    if (!error && env.device !== device.deviceId) {
      error = { code: ErrorCode.WRONG_AUTHOR, message: 'a device may push only envelopes it authored' };
      this.#deps.abuse();
    }
    const crisis = isCrisisLane(env.lane);
    const bytes = b64ByteLength(env.ct.length);
    let meter: Meter | undefined;
    if (!error) {
      // Quota before anything that costs: a deferral costs the relay no signature check.
      const syncBytes = bytes * (env.part?.count ?? 1);
      const reservation = crisis ? this.#deps.crisis.reserve(user, device.deviceId, bytes) : this.#deps.quota.reserve(user, policy, env.lane, bytes, syncBytes);
      if ('code' in reservation) {
        error = reservation;
        deferred.set(env.doc, reservation);
        if (reservation.retryAfterMs !== undefined) {
          this.#deferredUntil.delete(env.doc);
          this.#deferredUntil.set(env.doc, { until: this.#deps.now() + reservation.retryAfterMs, refusal: reservation });
          // Bounded: a device pushing to a million document ids must not grow this without end.
          if (this.#deferredUntil.size > MAX_DEFERRED_DOCS) this.#deferredUntil.delete(this.#deferredUntil.keys().next().value!);
        }
      } else {
        meter = { day: reservation.day, bytes, crisis };
      }
    }
    if (error || !meter) {
      this.#deps.reject(env.doc, env.counter, error!, env.kind);
      return;
    }
    const refuse = (refusal: QuotaRefusal, abuse = false): void => {
      this.#refund(meter, policy);
      if (abuse) this.#deps.abuse();
      this.#deps.reject(env.doc, env.counter, refusal, env.kind);
    };
    if (env.kind === 'snapshot') {
      // A snapshot that covers nothing new, or more than the log holds, is refused unverified.
      const base = env.base ?? 0;
      const [kept, head] = await Promise.all([store.snapshotBase(user, env.doc), store.headSeq(user, env.doc)]);
      if (base <= kept) return refuse({ code: ErrorCode.SNAPSHOT_REFUSED, message: `a snapshot up to seq ${kept} is already kept` });
      if (base > head) return refuse({ code: ErrorCode.SNAPSHOT_REFUSED, message: `snapshot covers seq ${base}, the log ends at ${head}` });
      if (!this.#deps.verifier.envelope(env)) return refuse({ code: ErrorCode.BAD_SIGNATURE, message: `snapshot #${env.counter} is not signed by this device` }, true);
      snapshots.push({ request: { userId: user, env }, meter });
      return;
    }
    const expected = Math.max(await store.lastCounter(user, env.doc, device.deviceId), this.#inflight.get(env.doc) ?? 0) + 1;
    if (env.counter > expected) {
      return refuse({ code: ErrorCode.COUNTER_GAP, message: `counter ${env.counter} skips ahead (expected ${expected})`, expected });
    }
    if (env.counter === expected) {
      if (!this.#deps.verifier.envelope(env)) return refuse({ code: ErrorCode.BAD_SIGNATURE, message: `envelope #${env.counter} is not signed by this device` }, true);
      this.#inflight.set(env.doc, env.counter);
    }
    // A counter below `expected` is a resend: the store answers it (duplicate when the signature
    // bytes match what it stored, COUNTER_REUSED otherwise) and never stores it, so it needs no
    // signature check.
    const metered = !crisis && bytes > 0;
    accepted.push({ request: metered ? { userId: user, env, meter: { day: meter.day, bytes } } : { userId: user, env }, meter });
  }

  /** The deferral still running for a document on this connection, with the time left. */
  #stillDeferred(doc: DocId): QuotaRefusal | undefined {
    const entry = this.#deferredUntil.get(doc);
    if (!entry) return undefined;
    const left = entry.until - this.#deps.now();
    if (left <= 0) {
      this.#deferredUntil.delete(doc);
      return undefined;
    }
    return { ...entry.refusal, retryAfterMs: left };
  }

  #refund(meter: Meter, policy: TierPolicy): void {
    if (meter.crisis) this.#deps.crisis.refund(this.#deps.user, this.#deps.device.deviceId, meter.day, meter.bytes);
    else if (meter.bytes > 0) this.#deps.quota.refund(this.#deps.user, policy, meter.day, meter.bytes);
  }

  async #commit(accepted: readonly Accepted[], policy: TierPolicy, urgent: boolean, readAt: number): Promise<void> {
    const outcomes = await this.#deps.commits.submit(
      accepted.map((a) => a.request),
      urgent,
    );
    const acks: { doc: DocId; counter: number; seq: Seq }[] = [];
    const stored = new Map<DocId, LogEntry[]>();
    let ackLane = 1;
    const receivedAt = this.#deps.now();
    outcomes.forEach((outcome, i) => {
      const { request, meter } = accepted[i]!;
      const { env } = request;
      if (this.#inflight.get(env.doc) === env.counter) this.#inflight.delete(env.doc);
      // The metered reservation of an envelope that was not stored is given back.
      if (outcome.status !== 'stored') this.#refund(meter, policy);
      if (outcome.status === 'rejected') {
        this.#deps.reject(env.doc, env.counter, outcome.error);
        return;
      }
      acks.push({ doc: env.doc, counter: env.counter, seq: outcome.seq });
      ackLane = Math.max(ackLane, env.lane);
      if (outcome.status === 'stored') {
        const list = stored.get(env.doc) ?? [];
        list.push({ seq: outcome.seq, env, receivedAt });
        stored.set(env.doc, list);
      }
    });
    if (acks.length > 0) this.#deps.ack(acks, ackLane);
    for (const [docId, entries] of stored) this.#deps.stored(docId, entries, readAt);
    if (this.#deps.events.has('committed')) this.#tellCommitted(stored, receivedAt - readAt);
  }

  /** One `committed` event per document and lane of what this commit stored (resends excluded). */
  #tellCommitted(stored: ReadonlyMap<DocId, readonly LogEntry[]>, latencyMs: number): void {
    const { user, device, events } = this.#deps;
    for (const [doc, entries] of stored) {
      const byLane = new Map<number, { envelopes: number; bytes: number }>();
      for (const { env } of entries) {
        const lane = byLane.get(env.lane) ?? { envelopes: 0, bytes: 0 };
        lane.envelopes++;
        lane.bytes += b64ByteLength(env.ct.length);
        byLane.set(env.lane, lane);
      }
      for (const [lane, { envelopes, bytes }] of byLane) {
        events.emit('committed', { user, device: device.deviceId, doc, lane, envelopes, bytes, latencyMs, tier: this.#deps.tierName() });
      }
    }
  }

  /**
   * Keeps a snapshot if it covers more than the relay's latest, and prunes the log it covers
   * (past the retention window). Snapshots are not fanned out: devices get them on catch-up.
   */
  async #storeSnapshots(snapshots: readonly Accepted[], policy: TierPolicy): Promise<void> {
    const { store, log, user, device } = this.#deps;
    for (const { request, meter } of snapshots) {
      const { env } = request;
      const outcome = await store.putSnapshot(request, this.#deps.now(), this.#deps.snapshotRetentionMs);
      if (outcome.status === 'rejected') {
        this.#refund(meter, policy);
        this.#deps.reject(env.doc, env.counter, outcome.error, 'snapshot');
        continue;
      }
      log.log('info', 'snapshot stored', { user, device: device.deviceId, base: env.base, pruned: outcome.pruned });
      this.#deps.ack([{ doc: env.doc, counter: env.counter, seq: outcome.seq, kind: 'snapshot' }], 1);
    }
  }
}
