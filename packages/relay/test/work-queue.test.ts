import { describe, expect, it } from 'vitest';
import { type WorkOwner, createWorkQueue } from '../src/server/work-queue.js';

const owner = (): WorkOwner & { paused: boolean; pauses: number } => {
  const o = {
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

describe('work queue', () => {
  it('runs queued work in order, in slices that yield to I/O', async () => {
    let clock = 0;
    const queue = createWorkQueue({ sliceMs: 5, now: () => clock, pauseAbove: 1_000 });
    const a = owner();
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
    for (let i = 0; i < 5 && ran.length < 10; i++) await turn();
    expect(ran).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(queue.size).toBe(0);
  });

  it('pauses a flooding owner and resumes it once its backlog drains', async () => {
    const queue = createWorkQueue({ pauseAbove: 4, resumeAt: 1 });
    const flood = owner();
    const quiet = owner();
    for (let i = 0; i < 10; i++) queue.enqueue(flood, () => {});
    queue.enqueue(quiet, () => {});
    expect(flood.paused).toBe(true);
    expect(flood.pauses).toBe(1);
    expect(quiet.paused).toBe(false);
    for (let i = 0; i < 5 && queue.size > 0; i++) await turn();
    expect(flood.paused).toBe(false);
  });

  it("runs an owner's queued work first when that owner sends urgent work", () => {
    const queue = createWorkQueue();
    const a = owner();
    const b = owner();
    const ran: string[] = [];
    queue.enqueue(b, () => ran.push('b1'));
    queue.enqueue(a, () => ran.push('a1'));
    queue.enqueue(a, () => ran.push('a2'));
    queue.runQueuedOf(a);
    ran.push('a-urgent');
    expect(ran).toEqual(['a1', 'a2', 'a-urgent']);
    expect(queue.size).toBe(1);
  });

  it('forgets the work of a closed owner', async () => {
    const queue = createWorkQueue();
    const a = owner();
    const ran: string[] = [];
    queue.enqueue(a, () => ran.push('a'));
    queue.forget(a);
    await turn();
    expect(ran).toEqual([]);
    expect(queue.size).toBe(0);
  });
});
