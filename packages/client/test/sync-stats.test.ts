import type { DocClass, DocId, Envelope } from '@keel/engine';
import { describe, expect, it } from 'vitest';
import { SyncStatsTracker } from '../src/sync/sync-stats.js';

const DOC = 'doc-a' as DocId;
const OTHER = 'doc-b' as DocId;
/** Only the fields the tracker reads; the rest of an envelope does not matter to it. */
const env = (doc: DocId, counter: number, kind: Envelope['kind'] = 'update') => ({ doc, counter, kind }) as Envelope;

const tracker = () => {
  let now = 1_000;
  const classes = new Map<DocId, DocClass>([
    [DOC, 'safety_plan'],
    [OTHER, 'mood'],
  ]);
  const t = new SyncStatsTracker({ now: () => now, classOf: (doc) => classes.get(doc) });
  return { t, advance: (ms: number) => (now += ms), classes };
};

describe('SyncStatsTracker', () => {
  it('measures from the oldest change an envelope carries to its ack; a resend keeps the first time', () => {
    const { t, advance } = tracker();
    t.changed(DOC);
    advance(30);
    t.changed(DOC); // merged into the same envelope: the older time counts
    advance(20);
    t.pushed([env(DOC, 1)]);
    advance(100);
    t.pushed([env(DOC, 1)]); // resent after a reconnect
    advance(50);
    t.acked(DOC, 1);
    expect(t.stats(0)).toEqual({ outboxDepth: 0, lastLatencyMs: { safety_plan: 200 } });
    // A second ack of the same counter (a duplicate) changes nothing.
    advance(500);
    t.acked(DOC, 1);
    expect(t.stats(3).lastLatencyMs).toEqual({ safety_plan: 200 });
    expect(t.stats(3).outboxDepth).toBe(3);
  });

  it('keeps classes apart, ignores snapshots and envelopes it has no change time for', () => {
    const { t, advance } = tracker();
    t.pushed([env(DOC, 7)]); // restored from storage: no change time here
    t.changed(OTHER);
    advance(10);
    t.pushed([env(OTHER, 1), env(OTHER, 2, 'snapshot')]);
    advance(5);
    t.acked(DOC, 7);
    t.acked(OTHER, 2);
    expect(t.stats(0).lastLatencyMs).toEqual({});
    t.acked(OTHER, 1);
    expect(t.stats(0).lastLatencyMs).toEqual({ mood: 15 });
  });

  it('stays bounded when the relay never acknowledges', () => {
    const { t } = tracker();
    for (let counter = 1; counter <= 10_000; counter++) {
      t.changed(DOC);
      t.pushed([env(DOC, counter)]);
    }
    // The oldest were forgotten: acking them measures nothing; the newest still measure.
    t.acked(DOC, 1);
    expect(t.stats(0).lastLatencyMs).toEqual({});
    t.acked(DOC, 10_000);
    expect(t.stats(0).lastLatencyMs).toEqual({ safety_plan: 0 });
  });
});
