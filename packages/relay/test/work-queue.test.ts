import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type WorkClass, type WorkOwner, createWorkQueue } from '../src/server/work-queue.js';

type TestOwner = WorkOwner & { paused: boolean; pauses: number; readonly name: string };

const owner = (name: string, group: unknown = name): TestOwner => {
  const o = {
    name,
    group,
    paused: false,
    pauses: 0,
    pause() {
      o.paused = true;
      o.pauses++;
    },
    resume() {
      o.paused = false;
    },
  };
  return o;
};

const turn = () => new Promise((resolve) => setImmediate(resolve));
const drainAll = async (queue: { size: number }, maxTurns = 1_000) => {
  for (let i = 0; i < maxTurns && queue.size > 0; i++) await turn();
  expect(queue.size).toBe(0);
};

describe('work queue', () => {
  it('runs queued work in order, in slices that yield to I/O', async () => {
    let clock = 0;
    const queue = createWorkQueue({ sliceMs: 5, now: () => clock, pauseAbove: 1_000 });
    const a = owner('a');
    const ran: number[] = [];
    for (let i = 0; i < 10; i++) {
      queue.enqueue(a, () => {
        ran.push(i);
        clock += 2; // each task "costs" 2 ms
      });
    }
    expect(ran).toEqual([]);
    await turn();
    // A 5 ms slice holds three 2 ms tasks, then yields.
    expect(ran).toEqual([0, 1, 2]);
    await drainAll(queue);
    expect(ran).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('counts the awaited part of an async task against the slice', async () => {
    let clock = 0;
    const queue = createWorkQueue({ sliceMs: 5, now: () => clock, pauseAbove: 1_000 });
    const a = owner('a');
    const ran: number[] = [];
    for (let i = 0; i < 6; i++) {
      queue.enqueue(a, async () => {
        await Promise.resolve();
        clock += 2;
        ran.push(i);
      });
    }
    await turn();
    expect(ran).toEqual([0, 1, 2]);
    await drainAll(queue);
    expect(ran).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('pauses a flooding owner and resumes it once its backlog drains', async () => {
    const queue = createWorkQueue({ pauseAbove: 4, resumeAt: 1 });
    const flood = owner('flood');
    const quiet = owner('quiet');
    for (let i = 0; i < 10; i++) queue.enqueue(flood, () => {});
    queue.enqueue(quiet, () => {});
    expect(flood.paused).toBe(true);
    expect(flood.pauses).toBe(1);
    expect(quiet.paused).toBe(false);
    await drainAll(queue);
    expect(flood.paused).toBe(false);
  });

  it('takes turns between users: a user with many sockets and a long backlog does not delay another', async () => {
    let clock = 0;
    const queue = createWorkQueue({ sliceMs: 1, now: () => clock, pauseAbove: 1_000 });
    const ran: string[] = [];
    const sockets = Array.from({ length: 20 }, (_, i) => owner(`m${i}`, 'mallory'));
    for (const socket of sockets) {
      for (let i = 0; i < 50; i++) {
        queue.enqueue(socket, () => {
          ran.push('m');
          clock += 1;
        });
      }
    }
    queue.enqueue(owner('alice'), () => {
      ran.push('alice');
      clock += 1;
    });
    await drainAll(queue, 2_000);
    // Alice's one task runs on the second turn, not behind Mallory's 1,000.
    expect(ran.indexOf('alice')).toBe(1);
  });

  it("runs urgent work before all normal work, and an owner's urgent task lifts its earlier tasks", async () => {
    const queue = createWorkQueue({ pauseAbove: 1_000 });
    const bulk = owner('bulk');
    const mixed = owner('mixed');
    const ran: string[] = [];
    for (let i = 0; i < 5; i++) queue.enqueue(bulk, () => void ran.push(`bulk${i}`));
    queue.enqueue(mixed, () => void ran.push('mixed-normal'));
    queue.enqueue(mixed, () => void ran.push('mixed-crisis'), 'urgent');
    await drainAll(queue);
    expect(ran.slice(0, 2)).toEqual(['mixed-normal', 'mixed-crisis']);
    expect(ran.slice(2)).toEqual(['bulk0', 'bulk1', 'bulk2', 'bulk3', 'bulk4']);
  });

  it("lets normal work take a turn once urgent work has kept it waiting for the stretch: a crisis-lane flood slows others' sync but cannot stop it", async () => {
    let clock = 0;
    const queue = createWorkQueue({ sliceMs: 5, urgentStretchMs: 20, now: () => clock, pauseAbove: 1_000 });
    const ran: { who: string; at: number }[] = [];
    // Mallory keeps the crisis lane full: every urgent step costs 2 ms and queues the next.
    const mallory = owner('mallory');
    let flooding = true;
    const flood = () => {
      ran.push({ who: 'flood', at: clock });
      clock += 2;
      if (flooding) queue.enqueue(mallory, flood, 'urgent');
    };
    for (let i = 0; i < 4; i++) queue.enqueue(mallory, flood, 'urgent');
    const bob = owner('bob');
    for (let i = 0; i < 5; i++) {
      queue.enqueue(bob, () => {
        ran.push({ who: 'bulk', at: clock });
        clock += 3;
      });
    }
    // An honest crisis update queued in the middle of it all.
    for (let i = 0; i < 20; i++) await turn();
    const crisisQueuedAt = clock;
    queue.enqueue(owner('alice'), () => {
      ran.push({ who: 'crisis', at: clock });
      clock += 1;
    }, 'urgent');
    for (let i = 0; i < 200 && ran.filter((r) => r.who === 'bulk').length < 5; i++) await turn();
    flooding = false;
    await drainAll(queue);

    const bulk = ran.filter((r) => r.who === 'bulk').map((r) => r.at);
    expect(bulk).toHaveLength(5);
    // One normal step per urgent stretch: roughly every 20 ms of flooding (plus the steps' own cost).
    expect(bulk[0]).toBeLessThanOrEqual(20 + 2);
    for (let i = 1; i < bulk.length; i++) expect(bulk[i]! - bulk[i - 1]!).toBeLessThanOrEqual(20 + 3 + 2);
    // Alice's crisis update still runs within a round or two: at most one bulk step in between.
    const crisis = ran.find((r) => r.who === 'crisis')!;
    expect(crisis.at - crisisQueuedAt).toBeLessThanOrEqual(2 + 3 + 2);
    // Without the flood ever pausing, urgent work still had most of the time.
    const flooded = ran.filter((r) => r.who === 'flood' && r.at <= bulk[4]!).length;
    expect(flooded * 2).toBeGreaterThan(bulk[4]! * 0.7);
  });

  it("keeps a step that returns 'again' at its owner's head while other owners take their turns", async () => {
    const queue = createWorkQueue({ pauseAbove: 1_000 });
    const ran: string[] = [];
    let steps = 0;
    const big = owner('big');
    queue.enqueue(big, () => {
      ran.push(`big-step${steps}`);
      return ++steps < 3 ? 'again' : undefined;
    });
    queue.enqueue(big, () => void ran.push('big-next'));
    queue.enqueue(owner('small'), () => void ran.push('small'));
    await drainAll(queue);
    expect(ran).toEqual(['big-step0', 'small', 'big-step1', 'big-step2', 'big-next']);
  });

  it('forgets the work of a closed owner and resumes its socket', async () => {
    const queue = createWorkQueue({ pauseAbove: 2 });
    const a = owner('a');
    const ran: string[] = [];
    for (let i = 0; i < 5; i++) queue.enqueue(a, () => void ran.push('a'));
    expect(a.paused).toBe(true);
    queue.forget(a);
    expect(a.paused).toBe(false);
    await turn();
    expect(ran).toEqual([]);
    expect(queue.size).toBe(0);
    await queue.idle();
  });

  it('reports a throwing task and carries on', async () => {
    const errors: unknown[] = [];
    const queue = createWorkQueue({ onError: (e) => errors.push(e) });
    const ran: string[] = [];
    queue.enqueue(owner('a'), () => {
      throw new Error('bug');
    });
    queue.enqueue(owner('b'), () => void ran.push('b'));
    await drainAll(queue);
    expect(ran).toEqual(['b']);
    expect(errors).toHaveLength(1);
  });

  it('runs every task once, keeps each owner’s order, and runs normal work while urgent work waits only once per urgent stretch (property)', async () => {
    const op = fc.record({ owner: fc.integer({ min: 0, max: 5 }), urgent: fc.boolean(), steps: fc.integer({ min: 1, max: 3 }) });
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 60 }), fc.integer({ min: 1, max: 3 }), async (ops, groups) => {
        let clock = 0;
        const stretch = 4;
        const queue = createWorkQueue({ sliceMs: 3, urgentStretchMs: stretch, now: () => clock, pauseAbove: 5, resumeAt: 1 });
        const owners = Array.from({ length: 6 }, (_, i) => owner(`o${i}`, `g${i % groups}`));
        let lastNormalStep = -Infinity;
        const ran: { owner: number; seq: number; cls: WorkClass }[] = [];
        const urgentWaiting = new Set<string>();
        const violations: string[] = [];
        ops.forEach((o, seq) => {
          let left = o.steps;
          const cls: WorkClass = o.urgent ? 'urgent' : 'normal';
          const id = `${seq}`;
          if (cls === 'urgent') urgentWaiting.add(id);
          queue.enqueue(
            owners[o.owner]!,
            () => {
              // A normal step of an owner not lifted by urgent work runs while urgent work waits
              // only once the urgent stretch has passed since the last normal step.
              const lifted = ops.some((p, i) => p.owner === o.owner && p.urgent && urgentWaiting.has(`${i}`));
              if (cls === 'normal' && !lifted) {
                if (urgentWaiting.size > 0 && clock - lastNormalStep < stretch) {
                  violations.push(`normal ${seq} ran at ${clock}, ${clock - lastNormalStep} ms after the last, while urgent ${[...urgentWaiting].join(',')} waited`);
                }
                lastNormalStep = clock;
              }
              clock += 1;
              if (--left > 0) return 'again';
              urgentWaiting.delete(id);
              ran.push({ owner: o.owner, seq, cls });
              return undefined;
            },
            cls,
          );
        });
        await drainAll(queue, 10_000);
        expect(violations).toEqual([]);
        expect(ran.map((r) => r.seq).sort((a, b) => a - b)).toEqual(ops.map((_, i) => i));
        for (let i = 0; i < owners.length; i++) {
          const mine = ran.filter((r) => r.owner === i).map((r) => r.seq);
          expect(mine).toEqual([...mine].sort((a, b) => a - b));
          expect(owners[i]!.paused).toBe(false);
        }
      }),
      { numRuns: 150, seed: 5 },
    );
  });
});
