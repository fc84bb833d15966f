import type { Logger } from '../log.js';
import { signatureHeader } from '../webhooks/signature.js';
import type { TimerDeps } from '../entitlements/grace.js';

/** What an operator is alerted about. Pseudonymous ids and numbers only: never a document name or content. */
export type Alert =
  | { readonly kind: 'crisis_sla_breach'; readonly user: string; readonly device: string; readonly doc: string; readonly seq: number; readonly latencyMs: number; readonly relayMs: number; readonly heldForCatchUp: boolean; readonly slaMs: number }
  | { readonly kind: 'crisis_receipt_missing'; readonly user: string; readonly device: string; readonly doc: string; readonly seq: number; readonly waitedMs: number }
  | { readonly kind: 'crisis_volume_anomaly'; readonly user: string; readonly device: string; readonly bytes: number; readonly thresholdBytes: number };
export type AlertKind = Alert['kind'];
export const ALERT_KINDS = ['crisis_sla_breach', 'crisis_receipt_missing', 'crisis_volume_anomaly'] as const satisfies readonly AlertKind[];

/** The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`, as Stripe signs webhooks. */
export const ALERT_SIGNATURE_HEADER = 'keel-signature';

export interface AlertTarget {
  readonly url: string;
  readonly secret: string;
}

export interface AlerterOptions {
  readonly log: Logger;
  /** Where alerts are POSTed, signed; none: log line and metric only. */
  readonly target?: AlertTarget | undefined;
  readonly now: () => number;
  readonly timers: Pick<TimerDeps, 'setTimeout' | 'clearTimeout'>;
  /** Counts every alert raised (the metric), by kind. */
  readonly count?: (kind: AlertKind) => void;
  /** Alerts waiting to be POSTed; past it new ones are logged and counted but not posted. */
  readonly maxQueued?: number;
  /** Attempts per alert (the first and retries 1 s, 4 s, … later). */
  readonly attempts?: number;
  readonly timeoutMs?: number;
  /** The HTTP client; the platform's fetch unless a test passes one. */
  readonly fetch?: typeof fetch;
}

/**
 * Raises operator alerts on three channels: an error-level log line, a counter, and (when an
 * alert URL is configured) a signed POST. Posting is one at a time from a bounded queue, with a
 * timeout and a few retries, so a slow or dead alert endpoint costs the relay a bounded amount
 * of memory and never blocks the path that raised the alert.
 */
export const createAlerter = (options: AlerterOptions) => {
  const { log, target, now, timers } = options;
  const maxQueued = options.maxQueued ?? 256;
  const attempts = options.attempts ?? 3;
  const timeoutMs = options.timeoutMs ?? 5_000;
  const doFetch = options.fetch ?? fetch;
  const queue: { body: string; attempt: number }[] = [];
  let busy = false;
  let closed = false;
  let dropped = 0;
  let delivered = 0;
  let failed = 0;
  let retry: unknown;
  const idleWaiters: (() => void)[] = [];

  const settleIdle = (): void => {
    if (busy || queue.length > 0 || retry !== undefined) return;
    for (const resolve of idleWaiters.splice(0)) resolve();
  };

  const post = async (body: string): Promise<boolean> => {
    if (!target) return true;
    try {
      const response = await doFetch(target.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', [ALERT_SIGNATURE_HEADER]: signatureHeader(target.secret, body, Math.floor(now() / 1000)) },
        body,
        signal: AbortSignal.timeout(timeoutMs),
      });
      await response.body?.cancel();
      return response.ok;
    } catch {
      return false;
    }
  };

  const pump = async (): Promise<void> => {
    if (busy || closed) return;
    busy = true;
    while (queue.length > 0 && !closed) {
      const item = queue[0]!;
      const ok = await post(item.body);
      if (ok) {
        queue.shift();
        delivered++;
        continue;
      }
      item.attempt++;
      if (item.attempt >= attempts) {
        queue.shift();
        failed++;
        log.log('error', 'alert could not be posted', { attempts: item.attempt });
        continue;
      }
      // Wait before trying again; nothing else is posted meanwhile (alerts keep their order).
      busy = false;
      retry = timers.setTimeout(
        () => {
          retry = undefined;
          void pump();
        },
        1_000 * 4 ** (item.attempt - 1),
      );
      return;
    }
    busy = false;
    settleIdle();
  };

  return {
    raise(alert: Alert): void {
      options.count?.(alert.kind);
      const { kind, ...fields } = alert;
      log.log('error', `alert: ${kind}`, fields);
      if (!target || closed) return;
      if (queue.length >= maxQueued) {
        dropped++;
        return;
      }
      queue.push({ body: JSON.stringify({ type: kind, at: new Date(now()).toISOString(), ...fields }), attempt: 0 });
      void pump();
    },

    stats(): { readonly queued: number; readonly delivered: number; readonly failed: number; readonly dropped: number } {
      return { queued: queue.length, delivered, failed, dropped };
    },

    /** Resolves once every queued alert was posted or given up. */
    idle(): Promise<void> {
      if (!busy && queue.length === 0 && retry === undefined) return Promise.resolve();
      return new Promise((resolve) => idleWaiters.push(resolve));
    },

    close(): void {
      closed = true;
      if (retry !== undefined) timers.clearTimeout(retry);
      retry = undefined;
      queue.length = 0;
      busy = false;
      settleIdle();
    },
  };
};
export type Alerter = ReturnType<typeof createAlerter>;
