import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Logger } from '../log.js';

/** Event-loop delay past which a window is logged: half the crisis SLA. */
const STALL_MS = 100;
const WINDOW_MS = 1_000;

/**
 * Watches the relay's own event loop: once a second, if the longest delay seen in that second
 * passed STALL_MS, logs it. Everything a crisis update waits for on the relay is a delay of
 * this loop, so this is the relay-side half of the 200 ms crisis SLA, visible to operators.
 * (A delay can also come from the machine: a process that does not get a core is late too.)
 */
export const watchEventLoop = (log: Logger): { stop(): void } => {
  const histogram = monitorEventLoopDelay({ resolution: 10 });
  histogram.enable();
  const timer = setInterval(() => {
    const maxMs = histogram.max / 1e6;
    if (maxMs > STALL_MS) log.log('warn', 'event loop stalled', { maxMs: Math.round(maxMs), p99Ms: Math.round(histogram.percentile(99) / 1e6) });
    histogram.reset();
  }, WINDOW_MS);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      histogram.disable();
    },
  };
};
