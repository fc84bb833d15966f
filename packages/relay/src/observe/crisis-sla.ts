import type { DeviceId, DocId, Seq, UserId } from '@keel/engine';
import type { TimerDeps } from '../entitlements/grace.js';
import type { RelayEventMap, RelayEvents } from '../events/relay-events.js';

/** The crisis SLA: a crisis-lane entry written on one device is applied on the others within it. */
export const CRISIS_SLA_MS = 200;

/** A receipt came: how long the entry took from reaching the relay to being applied on `device` (the `crisisMeasured` event). */
export type CrisisMeasure = RelayEventMap['crisisMeasured'];

/** No receipt came from a device that stayed connected for `waitedMs` after the entry was sent to it. */
export interface CrisisMissing {
  readonly user: UserId;
  readonly device: DeviceId;
  readonly doc: DocId;
  readonly seq: Seq;
  readonly waitedMs: number;
}

export interface CrisisSlaOptions {
  readonly now: () => number;
  readonly timers: Pick<TimerDeps, 'setTimeout' | 'clearTimeout'>;
  readonly slaMs?: number;
  /** How long a connected device may take to confirm before its receipt counts as never coming. */
  readonly missingAfterMs?: number;
  /**
   * Receipts awaited at once, over every user. A hostile device can make the relay wait for its
   * user's other devices (one per crisis entry and recipient); past the cap the oldest waits are
   * given up (counted as `unwatched`), never an honest entry's delivery.
   */
  readonly maxPending?: number;
  readonly onMeasured: (measure: CrisisMeasure) => void;
  readonly onMissing: (missing: CrisisMissing) => void;
}

interface Pending {
  readonly user: UserId;
  readonly device: DeviceId;
  readonly doc: DocId;
  readonly seq: Seq;
  readonly writtenAt: number;
  readonly sentAt: number;
  readonly live: boolean;
}

const keyOf = (device: DeviceId, doc: DocId, seq: Seq): string => `${device} ${doc} ${seq}`;

/**
 * The relay's watch over the crisis SLA. For every crisis-lane entry sent live to another
 * connected device of its user, it waits for that device's receipt and measures reaching the
 * relay → applied there (the entry's `receivedAt` → the receipt's arrival: it includes the
 * relay's own commit and queueing, the trip out, the device's verifying and applying, and the
 * receipt's trip back, so it slightly overstates what the user saw). A device that disconnects
 * is no longer waited for (it catches up on connect, outside any SLA a relay can watch); one
 * that stays connected and never answers within `missingAfterMs` is reported as missing.
 *
 * Holds a bounded map and one timer; time and timers come in, so it is tested on a fake clock.
 */
export const createCrisisSlaWatch = (options: CrisisSlaOptions) => {
  const slaMs = options.slaMs ?? CRISIS_SLA_MS;
  const missingAfterMs = options.missingAfterMs ?? 5_000;
  const maxPending = options.maxPending ?? 10_000;
  const { now, timers } = options;
  /** In the order they were sent (Map keeps insertion order): the first is the oldest. */
  const pending = new Map<string, Pending>();
  let timer: unknown;
  let unwatched = 0;

  const sweep = (): void => {
    timer = undefined;
    const t = now();
    for (const [key, p] of pending) {
      if (t - p.sentAt < missingAfterMs) break;
      pending.delete(key);
      options.onMissing({ user: p.user, device: p.device, doc: p.doc, seq: p.seq, waitedMs: t - p.sentAt });
    }
    arm();
  };

  const arm = (): void => {
    if (timer !== undefined) return;
    const first = pending.values().next();
    if (first.done) return;
    timer = timers.setTimeout(sweep, Math.max(0, first.value.sentAt + missingAfterMs - now()));
  };

  return {
    /** Crisis-lane entries of `user`'s `doc` were queued for `device`, which is connected and subscribed. */
    sent(user: UserId, device: DeviceId, doc: DocId, entries: readonly { readonly seq: Seq; readonly receivedAt: number }[], live = true): void {
      const sentAt = now();
      for (const { seq, receivedAt } of entries) {
        const key = keyOf(device, doc, seq);
        if (pending.has(key)) continue;
        if (pending.size >= maxPending) {
          const oldest = pending.keys().next();
          if (!oldest.done) pending.delete(oldest.value);
          unwatched++;
        }
        pending.set(key, { user, device, doc, seq, writtenAt: receivedAt, sentAt, live });
      }
      arm();
    },

    /** `device` applied these seqs of `doc`; the ones awaited are measured, the rest ignored. */
    receipt(device: DeviceId, doc: DocId, seqs: readonly Seq[]): void {
      const t = now();
      for (const seq of seqs) {
        const key = keyOf(device, doc, seq);
        const p = pending.get(key);
        if (!p) continue;
        pending.delete(key);
        const latencyMs = Math.max(0, t - p.writtenAt);
        const relayMs = Math.min(latencyMs, Math.max(0, p.sentAt - p.writtenAt));
        options.onMeasured({ user: p.user, device, doc, seq, latencyMs, relayMs, heldForCatchUp: !p.live, breached: latencyMs > slaMs });
      }
    },

    /** `device` has no connection left: it is not waited for (it catches up when it is back). */
    deviceGone(device: DeviceId): void {
      const prefix = `${device} `;
      for (const key of pending.keys()) if (key.startsWith(prefix)) pending.delete(key);
    },

    /** Receipts awaited now, and waits given up at the cap since the start. */
    stats(): { readonly pending: number; readonly unwatched: number } {
      return { pending: pending.size, unwatched };
    },

    close(): void {
      if (timer !== undefined) timers.clearTimeout(timer);
      timer = undefined;
      pending.clear();
    },
  };
};
export type CrisisSlaWatch = ReturnType<typeof createCrisisSlaWatch>;

/**
 * The watch as a listener on the relay's bus: fan-outs of crisis entries and receipts in,
 * `crisisMeasured` and `crisisReceiptMissing` out. Returns what stops it.
 */
export const watchCrisisSla = (
  events: RelayEvents,
  options: Omit<CrisisSlaOptions, 'now' | 'onMeasured' | 'onMissing'>,
): { readonly watch: CrisisSlaWatch; stop(): void } => {
  const watch = createCrisisSlaWatch({
    ...options,
    now: () => events.now(),
    onMeasured: (m) => events.emit('crisisMeasured', m),
    onMissing: (m) => events.emit('crisisReceiptMissing', m),
  });
  const off = [
    events.on('crisisFannedOut', ({ user, device, doc, entries, live }) => watch.sent(user, device, doc, entries, live)),
    events.on('receipt', ({ device, doc, seqs }) => watch.receipt(device, doc, seqs)),
    events.on('deviceOffline', ({ device }) => watch.deviceGone(device)),
  ];
  return {
    watch,
    stop() {
      for (const f of off) f();
      watch.close();
    },
  };
};
