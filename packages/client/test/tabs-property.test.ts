// Property: whatever the interleaving of edits in several tabs and on another device, leader
// kills and new tabs (reloads), every edit ends up exactly once in every live tab and on the
// other device, every flush resolves, and no envelope is refused for a reused counter.
// TABS_RUNS and TABS_SEED widen the search locally (defaults: 12 runs, seed 7).
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as Y from 'yjs';
import { connectDevice, waitFor } from '../../../test/support/devices.js';
import { type RelayProcess, removeRelayDir, startRelayProcess } from '../../../test/support/relay-process.js';
import type { DocSpec } from '../src/client-api.js';
import { createIdentity, linkNewDevice } from '../src/identity.js';
import { createMemoryLocks } from '../src/tabs/leader-lock.js';
import { type Tab, installFakeIndexedDb, openTab } from './tabs-harness.js';

const SPEC: DocSpec = { class: 'checkin', name: 'property' };

type Step =
  | { readonly kind: 'edit'; readonly tab: number; readonly count: number }
  | { readonly kind: 'remote'; readonly count: number }
  | { readonly kind: 'kill' }
  | { readonly kind: 'open' }
  | { readonly kind: 'pause' };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('edit' as const), tab: fc.nat(5), count: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('remote' as const), count: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'kill' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'open' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'pause' as const }) },
);

let relay: RelayProcess;
let restoreIdb: () => void;
beforeAll(async () => {
  relay = await startRelayProcess();
  restoreIdb = installFakeIndexedDb();
});
afterAll(async () => {
  restoreIdb();
  await relay.stop();
  removeRelayDir(relay.dir);
});

const items = (doc: Y.Doc): string[] => doc.getArray<string>('items').toArray();
const within = <T>(promise: Promise<T>, ms: number, what: string): Promise<T> => {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms))),
  ]);
};

let run = 0;

describe('tabs under random edits, leader kills and reloads', () => {
  it('converge on exactly the edits made, with every flush resolved and no reused counter', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 4, maxLength: 18 }), async (steps) => {
        const identity = await createIdentity();
        const name = `prop${++run}`;
        const locks = createMemoryLocks();
        const all: Tab[] = [];
        const live: Tab[] = [];
        const docs = new Map<Tab, Y.Doc>();
        const other = await connectDevice(relay.url, await linkNewDevice(identity));
        const otherDoc = await other.client.open(SPEC);
        const expected: string[] = [];
        let serial = 0;
        const open = async () => {
          const tab = await openTab({ url: relay.url, identity, name, locks, label: `t${all.length}`, settleMs: 500 });
          all.push(tab);
          live.push(tab);
          docs.set(tab, await tab.client.open(SPEC));
        };
        try {
          await open();
          await open();
          for (const step of steps) {
            if (step.kind === 'edit') {
              const tab = live[step.tab % live.length]!;
              for (let i = 0; i < step.count; i++) {
                const item = `${tab.label}-${serial++}`;
                docs.get(tab)!.getArray<string>('items').push([item]);
                expected.push(item);
              }
            } else if (step.kind === 'remote') {
              // Another device of the user edits meanwhile.
              for (let i = 0; i < step.count; i++) {
                const item = `o-${serial++}`;
                otherDoc.getArray<string>('items').push([item]);
                expected.push(item);
              }
            } else if (step.kind === 'kill') {
              const leader = live.find((t) => t.client.isLeader);
              if (!leader) continue;
              live.splice(live.indexOf(leader), 1);
              await leader.kill();
              // A device always has a tab open again eventually (the user reloads).
              if (live.length === 0) await open();
            } else if (step.kind === 'open') {
              if (live.length < 4) await open();
            } else {
              await new Promise((resolve) => setTimeout(resolve, 10));
            }
          }
          await within(Promise.all([...live.map((t) => t.client.flush()), other.client.flush()]), 30_000, 'every live tab and the other device flush');
          const copies = [...live.map((t) => docs.get(t)!), otherDoc];
          await waitFor(() => copies.every((doc) => items(doc).length >= expected.length), 20_000, 'every copy complete');
          for (const doc of copies) {
            expect(items(doc).length).toBe(expected.length);
            expect([...items(doc)].sort()).toEqual([...expected].sort());
          }
          expect(live.filter((t) => t.client.isLeader)).toHaveLength(1);
          const codes = [...all.flatMap((t) => t.errors), ...other.errors].map((e) => e.code);
          expect(codes).not.toContain('COUNTER_REUSED');
        } finally {
          for (const tab of all.reverse()) await tab.dispose();
          await other.client.close();
        }
      }),
      { numRuns: Number(process.env.TABS_RUNS ?? 12), seed: Number(process.env.TABS_SEED ?? 7), endOnFailure: true },
    );
    expect(relay.output()).not.toContain('COUNTER_REUSED');
  }, 240_000);
});
