import type { RelayEventMap, RelayEvents } from '../events/relay-events.js';
import type { Logger } from '../log.js';
import { type LogThrottle, createLogThrottle } from '../log-throttle.js';

/**
 * Throttle keys remembered at most: a key names a device, so a flood from many devices costs
 * bounded memory (the stalest key is forgotten first).
 */
const MAX_REFUSAL_KEYS = 4_096;

export interface LogListenerDeps {
  readonly events: RelayEvents;
  readonly log: Logger;
  readonly now: () => number;
}

export interface LogListener {
  /** Writes refusal lines still suppressed (with their count) and stops listening. */
  stop(): void;
}

const REFUSAL_LINES: Readonly<Record<RelayEventMap['refused']['kind'], { readonly level: 'info' | 'warn'; readonly msg: string }>> = {
  'bad-frame': { level: 'warn', msg: 'bad frame' },
  rejected: { level: 'warn', msg: 'envelope rejected' },
  // A deferral is the relay working as designed (a tier's quota); not a warning.
  deferred: { level: 'info', msg: 'envelope deferred' },
};

/**
 * The relay's JSON log lines for connections and refusals, written from bus events: pseudonymous
 * ids, codes, sizes and durations only (the events carry nothing else), never a document name,
 * an address or plaintext. Refusal lines are throttled per kind, code and device — at most one
 * per 10 s, then one line carrying how many were suppressed — so a device that floods bad frames
 * cannot fill the disk, and cannot hide another device's refusals behind its own.
 */
export const createLogListener = (deps: LogListenerDeps): LogListener => {
  const { events, log } = deps;
  const throttle: LogThrottle = createLogThrottle({ log, now: deps.now, maxKeys: MAX_REFUSAL_KEYS });
  const offs = [
    events.on('authenticated', ({ user, device, tier, newUser }) => log.log('info', 'device connected', { user, device, tier, newUser })),
    events.on('disconnected', ({ user, device, code, durationMs }) => {
      // Unauthenticated sockets come and go by the thousand under a scan: not worth a line each.
      if (device === undefined) return;
      log.log('info', 'device disconnected', { user, device, code, durationMs });
    }),
    events.on('refused', ({ user, device, code, frame, kind }) => {
      const { level, msg } = REFUSAL_LINES[kind];
      throttle.log(`refused.${kind}.${code}.${device ?? '-'}`, level, msg, { user, device, code, frame });
    }),
  ];
  return {
    stop() {
      for (const off of offs) off();
      throttle.flush();
    },
  };
};
