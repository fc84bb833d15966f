import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ErrorCode, RELAY_FRAME_JSON_BUDGET, WireLimits, checkJsonBudget, clampRelayFrameLimit, inboundFrameBudget, parseRelayFrame } from '@keel/engine';

/** Nesting depth and container + comma count of a parsed value, as the scanner counts them. */
const measure = (value: unknown, depth = 0): { depth: number; items: number } => {
  if (Array.isArray(value) || (typeof value === 'object' && value !== null)) {
    const children = Array.isArray(value) ? value : Object.values(value);
    let deepest = depth + 1;
    let items = 1 + Math.max(0, children.length - 1);
    for (const child of children) {
      const m = measure(child, depth + 1);
      deepest = Math.max(deepest, m.depth);
      items += m.items;
    }
    return { depth: deepest, items };
  }
  return { depth, items: 0 };
};

describe('JSON budget before JSON.parse', () => {
  it('agrees with the parsed structure on any JSON, strings with quotes, backslashes and brackets included (property)', () => {
    fc.assert(
      fc.property(fc.json({ maxDepth: 6 }), fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 60 }), (text, maxDepth, maxItems) => {
        const { depth, items } = measure(JSON.parse(text));
        const within = checkJsonBudget(text, { maxDepth, maxItems });
        expect(within.ok).toBe(depth <= maxDepth && items <= maxItems);
      }),
      { seed: 11, numRuns: 2000 },
    );
  });

  it('refuses a depth bomb and an array bomb in linear time, before parsing', () => {
    const depth = 4_000_000;
    const deep = `{"type":"updates","doc":${'['.repeat(depth)}${']'.repeat(depth)}}`;
    const wide = `{"type":"updates","items":[${'0,'.repeat(4_000_000)}0]}`;
    for (const [text, pattern] of [
      [deep, /deeper than 10/],
      [wide, /more than 100000 values/],
    ] as const) {
      const started = performance.now();
      const r = parseRelayFrame(text, WireLimits.maxInboundFrameBytes);
      expect(r.ok || r.error.code).toBe(ErrorCode.JSON_BUDGET);
      if (!r.ok) expect(r.error.message).toMatch(pattern);
      expect(performance.now() - started).toBeLessThan(200);
    }
  });

  it('lets every frame shape through: a full updates frame sits far below the budget', () => {
    const item = { seq: 1, env: { doc: 'd', kind: 'update', epoch: 0, device: 'x', counter: 1, lane: 1, part: { index: 0, count: 2 }, nonce: 'n', ct: 'c', sig: 's' } };
    const { depth, items } = measure({ type: 'updates', doc: 'd', items: Array.from({ length: WireLimits.maxEnvelopesPerFrame }, () => item) });
    expect(depth).toBeLessThanOrEqual(RELAY_FRAME_JSON_BUDGET.maxDepth);
    expect(items * 5).toBeLessThan(RELAY_FRAME_JSON_BUDGET.maxItems);
  });
});

describe('inbound frame budget', () => {
  it('is the default limit before ready, the announced one plus a margin after, never above the hard cap', () => {
    expect(inboundFrameBudget()).toBe(WireLimits.defaultMaxFrameBytes);
    expect(inboundFrameBudget(2 * 1024 * 1024)).toBeGreaterThan(2 * 1024 * 1024);
    expect(inboundFrameBudget(2 * 1024 * 1024)).toBeLessThan(2.1 * 1024 * 1024);
    // A small announced limit does not shrink what the relay's catch-up pages may hold.
    expect(inboundFrameBudget(64 * 1024)).toBeGreaterThan(WireLimits.defaultMaxFrameBytes);
    // A relay announcing 64 MiB is clamped; what the device pushes still fits what others accept.
    expect(inboundFrameBudget(64 * 1024 * 1024)).toBe(WireLimits.maxInboundFrameBytes);
    expect(clampRelayFrameLimit(64 * 1024 * 1024)).toBeLessThan(WireLimits.maxInboundFrameBytes);
    expect(clampRelayFrameLimit(1024 * 1024)).toBe(1024 * 1024);
  });
});
