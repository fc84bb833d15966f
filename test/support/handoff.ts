import type { SessionDocSpec, SessionHandoff } from '@keel/client';
import type { SessionRecord } from '@keel/engine';

/**
 * Resolves when `handoff` sees a record of `sessionId` in `spec`'s document, with the moment it
 * did (performance.now()); rejects after `timeoutMs`. Listener and timer are always removed.
 */
export const nextSession = (handoff: SessionHandoff, spec: SessionDocSpec, sessionId: string, timeoutMs = 5_000) =>
  new Promise<{ readonly record: SessionRecord; readonly at: number }>((resolve, reject) => {
    const onSession = (s: SessionDocSpec, record: SessionRecord | undefined) => {
      if (s.class !== spec.class || s.name !== spec.name || record?.sessionId !== sessionId) return;
      done();
      resolve({ record, at: performance.now() });
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`session ${sessionId} did not arrive within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      handoff.off('session', onSession);
    };
    handoff.on('session', onSession);
  });
