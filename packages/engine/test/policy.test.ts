import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_TIERS,
  DOC_CLASS_PRIORITY,
  ErrorCode,
  Priority,
  TIER_NAMES,
  TierPolicySchema,
  detectCrisis,
  effectivePriority,
  isComplete,
  laneCeiling,
  laneFits,
  mayHoldCrisisAssessment,
  parseAssessment,
  resolveTierMatrix,
  scoreGad7,
  scorePhq9,
} from '@keel/engine';
import type { Answer, DocClass, TierName } from '@keel/engine';

const KiB = 1024;
const MiB = 1024 * 1024;

describe('tier matrix', () => {
  it('DEFAULT_TIERS carries docs/design.md\'s numbers exactly', () => {
    // Transcribed by hand from docs/design.md "Subscription tiers" (less uptime and error tolerance,
    // which no relay can attest to); a change there must change this.
    expect(DEFAULT_TIERS).toEqual({
      trial: {
        tierPriority: 3, maxConcurrent: 2, batchWindowMs: 30_000, bandwidthBytesPerSec: 50 * KiB,
        maxSyncBytes: 10 * MiB, dailyBytes: 100 * MiB, offlineQueueLimit: 20, realtime: false,
        crossDevice: false, conflictResolution: 'manual', escalation: false, maxResponseMs: 30_000,
      },
      basic: {
        tierPriority: 4, maxConcurrent: 3, batchWindowMs: 5_000, bandwidthBytesPerSec: 200 * KiB,
        maxSyncBytes: 50 * MiB, dailyBytes: 500 * MiB, offlineQueueLimit: 50, realtime: false,
        crossDevice: true, conflictResolution: 'automatic', escalation: false, maxResponseMs: 5_000,
      },
      grace_period: {
        tierPriority: 5, maxConcurrent: 5, batchWindowMs: 1_000, bandwidthBytesPerSec: 100 * KiB,
        maxSyncBytes: 25 * MiB, dailyBytes: 250 * MiB, offlineQueueLimit: 75, realtime: false,
        crossDevice: true, conflictResolution: 'automatic', escalation: false, maxResponseMs: 2_000,
      },
      premium: {
        tierPriority: 7, maxConcurrent: 10, batchWindowMs: 0, bandwidthBytesPerSec: null,
        maxSyncBytes: null, dailyBytes: null, offlineQueueLimit: 200, realtime: true,
        crossDevice: true, conflictResolution: 'automatic', escalation: true, maxResponseMs: 500,
      },
    });
    expect(DEFAULT_TIERS.trial.bandwidthBytesPerSec).toBe(51_200);
    for (const name of TIER_NAMES) expect(TierPolicySchema.safeParse(DEFAULT_TIERS[name]).success).toBe(true);
    expect(Object.isFrozen(DEFAULT_TIERS.premium)).toBe(true);
  });

  it('no overrides gives the defaults', () => {
    expect(resolveTierMatrix(undefined)).toEqual({ ok: true, value: DEFAULT_TIERS });
    expect(resolveTierMatrix({})).toEqual({ ok: true, value: DEFAULT_TIERS });
  });

  it('merges an operator\'s overrides onto the defaults, field by field', () => {
    const r = resolveTierMatrix({ trial: { batchWindowMs: 10_000, bandwidthBytesPerSec: null }, premium: { maxConcurrent: 20 } });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.trial).toEqual({ ...DEFAULT_TIERS.trial, batchWindowMs: 10_000, bandwidthBytesPerSec: null });
    expect(r.value.premium).toEqual({ ...DEFAULT_TIERS.premium, maxConcurrent: 20 });
    expect(r.value.basic).toEqual(DEFAULT_TIERS.basic);
    expect(r.value.grace_period).toEqual(DEFAULT_TIERS.grace_period);
    // The defaults themselves are untouched.
    expect(DEFAULT_TIERS.trial.batchWindowMs).toBe(30_000);
  });

  it('rejects bad overrides with a SCHEMA error naming the path', () => {
    const cases: [unknown, RegExp][] = [
      [{ gold: { maxConcurrent: 4 } }, /gold: unknown tier/],
      [{ trial: { batchWindow: 4 } }, /trial\.batchWindow: unknown field/],
      [{ basic: { maxConcurrent: 0 } }, /basic\.maxConcurrent/],
      [{ basic: { tierPriority: 11 } }, /basic\.tierPriority/],
      [{ premium: { uptime: 0.999 } }, /premium\.uptime: removed/],
      [{ premium: { maxResponseMs: 0 } }, /premium\.maxResponseMs/],
      [{ trial: { bandwidthBytesPerSec: -1 } }, /trial\.bandwidthBytesPerSec/],
      [{ trial: { conflictResolution: 'sometimes' } }, /trial\.conflictResolution/],
      [{ grace_period: { batchWindowMs: 1.5 } }, /grace_period\.batchWindowMs/],
      [{ trial: null }, /trial/],
      ['premium', /\(root\)/],
      [[], /\(root\)/],
    ];
    for (const [input, message] of cases) {
      const r = resolveTierMatrix(input);
      expect(r.ok, JSON.stringify(input)).toBe(false);
      if (r.ok) continue;
      expect(r.error.code).toBe(ErrorCode.SCHEMA);
      expect(r.error.message).toMatch(message);
    }
  });

  it('never throws and only ever yields a valid matrix (property)', () => {
    const field = fc.constantFrom(...Object.keys(DEFAULT_TIERS.trial), 'nope');
    const value = fc.oneof(fc.integer({ min: -5, max: 100_000 }), fc.double(), fc.boolean(), fc.constant(null), fc.string());
    const overrides = fc.dictionary(fc.constantFrom(...TIER_NAMES, 'gold'), fc.dictionary(field, value, { maxKeys: 3 }), { maxKeys: 3 });
    fc.assert(
      fc.property(overrides, (input) => {
        const r = resolveTierMatrix(input);
        if (r.ok) for (const name of TIER_NAMES) expect(TierPolicySchema.safeParse(r.value[name]).success).toBe(true);
        else expect(r.error.code).toBe(ErrorCode.SCHEMA);
      }),
      { seed: 11, numRuns: 500 },
    );
  });
});

describe('effectivePriority', () => {
  const classes = Object.keys(DOC_CLASS_PRIORITY) as DocClass[];
  const at = (docClass: DocClass, tier: TierName, extra: { crisisMode?: boolean; sessionActive?: boolean; crisisAssessment?: boolean } = {}) =>
    effectivePriority({
      docClass,
      tier,
      policy: DEFAULT_TIERS[tier],
      crisisMode: extra.crisisMode ?? false,
      sessionActive: extra.sessionActive ?? false,
      ...(extra.crisisAssessment === undefined ? {} : { crisisAssessment: extra.crisisAssessment }),
    });

  it('follows the table of docs/design.md rules', () => {
    // [class, tier, flags, expected]
    const table: [DocClass, TierName, Parameters<typeof at>[2], number][] = [
      // Crisis classes keep their base on every tier.
      ['safety_plan', 'trial', {}, 10],
      ['crisis_contacts', 'basic', {}, 10],
      ['crisis_assessment', 'trial', {}, 9],
      // A crisis-level assessment is lane 9 everywhere.
      ['assessment', 'trial', { crisisAssessment: true }, 9],
      ['assessment', 'premium', { crisisAssessment: true }, 9],
      ['assessment', 'premium', { crisisAssessment: false }, 6],
      // Otherwise capped by the tier.
      ['assessment', 'trial', {}, 3],
      ['assessment', 'basic', {}, 4],
      ['assessment', 'grace_period', {}, 5],
      ['assessment', 'premium', {}, 6],
      ['history', 'premium', {}, 3],
      ['misc', 'premium', {}, 1],
      ['analytics', 'premium', {}, 7],
      // Active session: escalated where the tier allows it, in a grace period, in crisis mode.
      ['breathing_session', 'premium', { sessionActive: true }, 8],
      ['therapeutic_session', 'grace_period', { sessionActive: true }, 8],
      ['therapeutic_session', 'basic', { sessionActive: true }, 4],
      ['therapeutic_session', 'trial', { sessionActive: true }, 3],
      ['therapeutic_session', 'trial', { sessionActive: true, crisisMode: true }, 8],
      ['therapeutic_session', 'basic', { sessionActive: true, crisisMode: true }, 8],
      // No session: the cap applies, crisis mode or not.
      ['therapeutic_session', 'premium', {}, 7],
      ['therapeutic_session', 'grace_period', {}, 5],
      ['therapeutic_session', 'trial', { crisisMode: true }, 3],
      // Escalation is for therapeutic documents only.
      ['checkin', 'premium', { sessionActive: true, crisisMode: true }, 4],
      ['profile', 'trial', { sessionActive: true }, 3],
    ];
    for (const [docClass, tier, flags, expected] of table) {
      expect(at(docClass, tier, flags), `${docClass} on ${tier} ${JSON.stringify(flags)}`).toBe(expected);
    }
  });

  it('never weakens crisis, and exceeds the tier cap only for an active session (property)', () => {
    fc.assert(
      fc.property(fc.constantFrom(...classes), fc.constantFrom(...TIER_NAMES), fc.boolean(), fc.boolean(), fc.boolean(), (docClass, tier, crisisMode, sessionActive, crisisAssessment) => {
        const p = at(docClass, tier, { crisisMode, sessionActive, crisisAssessment });
        const base = DOC_CLASS_PRIORITY[docClass];
        const cap = DEFAULT_TIERS[tier].tierPriority;
        if (base >= Priority.CRISIS_ASSESSMENT) expect(p).toBe(base);
        else if (crisisAssessment) expect(p).toBe(Priority.CRISIS_ASSESSMENT);
        else {
          expect(p).toBeLessThanOrEqual(base);
          expect(p).toBeGreaterThanOrEqual(Math.min(base, cap));
          if (p > cap) expect(base === Priority.THERAPEUTIC_ACTIVE && sessionActive).toBe(true);
        }
        // Crisis mode only ever raises a priority.
        expect(at(docClass, tier, { crisisMode: true, sessionActive, crisisAssessment })).toBeGreaterThanOrEqual(
          at(docClass, tier, { crisisMode: false, sessionActive, crisisAssessment }),
        );
      }),
      { seed: 5, numRuns: 300 },
    );
  });
});

describe('lane ceilings', () => {
  const classes = Object.keys(DOC_CLASS_PRIORITY) as DocClass[];

  it('no honest device seals above its class’s ceiling, whatever its tier and state (property)', () => {
    fc.assert(
      fc.property(fc.constantFrom(...classes), fc.constantFrom(...TIER_NAMES), fc.boolean(), fc.boolean(), fc.boolean(), (docClass, tier, crisisMode, sessionActive, flagged) => {
        // The client flags a crisis assessment only in classes that may hold one.
        const crisisAssessment = flagged && mayHoldCrisisAssessment(docClass);
        const lane = effectivePriority({ docClass, tier, policy: DEFAULT_TIERS[tier], crisisMode, sessionActive, crisisAssessment });
        expect(laneFits(docClass, lane)).toBe(true);
      }),
      { seed: 8, numRuns: 300 },
    );
  });

  it('is the base of every class but assessments, which may reach CRISIS_ASSESSMENT; nothing bulk fits a crisis lane', () => {
    expect(laneCeiling('assessment')).toBe(Priority.CRISIS_ASSESSMENT);
    expect(laneCeiling('safety_plan')).toBe(Priority.CRISIS_EMERGENCY);
    expect(laneCeiling('breathing_session')).toBe(Priority.THERAPEUTIC_ACTIVE);
    for (const docClass of classes) {
      if (docClass !== 'assessment') expect(laneCeiling(docClass)).toBe(DOC_CLASS_PRIORITY[docClass]);
      if (DOC_CLASS_PRIORITY[docClass] < Priority.ASSESSMENT_DATA) expect(laneFits(docClass, Priority.CRISIS_ASSESSMENT)).toBe(false);
    }
  });
});

describe('crisis detection', () => {
  const phq9 = (answers: Answer[]) => detectCrisis({ kind: 'phq9', answers });
  const gad7 = (answers: Answer[]) => detectCrisis({ kind: 'gad7', answers });

  it('scores PHQ-9 and GAD-7 as sums', () => {
    expect(scorePhq9([3, 3, 3, 3, 3, 3, 3, 3, 3])).toBe(27);
    expect(scoreGad7([0, 1, 2, 3, 0, 1, 2])).toBe(9);
    expect(() => scorePhq9([1, 2])).toThrow(RangeError);
  });

  it('PHQ-9: total 19 is not a crisis, 20 is', () => {
    const at19 = phq9([3, 3, 3, 3, 3, 2, 2, 0, 0]);
    expect(at19).toEqual({ crisis: false, total: 19, complete: true, reasons: [], priority: Priority.ASSESSMENT_DATA });
    const at20 = phq9([3, 3, 3, 3, 3, 3, 2, 0, 0]);
    expect(at20).toEqual({ crisis: true, total: 20, complete: true, reasons: ['phq9_total'], priority: Priority.CRISIS_ASSESSMENT });
  });

  it('PHQ-9: any answer above 0 on item 9 is a crisis, however low the total', () => {
    expect(phq9([0, 0, 0, 0, 0, 0, 0, 0, 1])).toEqual({ crisis: true, total: 1, complete: true, reasons: ['phq9_item9'], priority: 9 });
    expect(phq9([3, 3, 3, 3, 3, 3, 3, 3, 3]).reasons).toEqual(['phq9_total', 'phq9_item9']);
    expect(phq9([1, 0, 0, 0, 0, 0, 0, 1, 0]).crisis).toBe(false);
  });

  it('GAD-7: total 14 is not a crisis, 15 is', () => {
    expect(gad7([3, 3, 3, 3, 2, 0, 0])).toEqual({ crisis: false, total: 14, complete: true, reasons: [], priority: 6 });
    expect(gad7([3, 3, 3, 3, 3, 0, 0])).toEqual({ crisis: true, total: 15, complete: true, reasons: ['gad7_total'], priority: 9 });
  });

  it('rejects invalid answers with a SCHEMA error', () => {
    const bad: [unknown, RegExp][] = [
      [{ kind: 'phq9', answers: [0, 0, 0, 0, 0, 0, 0, 0] }, /answers/],
      [{ kind: 'phq9', answers: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }, /answers/],
      [{ kind: 'gad7', answers: [0, 0, 0, 0, 0, 0, 4] }, /answers\.6/],
      [{ kind: 'gad7', answers: [0, 0, 0, 0, 0, 0, -1] }, /answers\.6/],
      [{ kind: 'gad7', answers: [0, 0, 0, 0, 0, 0, 1.5] }, /answers\.6/],
      [{ kind: 'gad7', answers: [0, 0, 0, 0, 0, 0, '1'] }, /answers\.6/],
      [{ kind: 'gad7', answers: [0, 0, 0, 0, 0, 0, undefined] }, /answers\.6/],
      [{ kind: 'phq9', answers: [null, null, null, null, null, null, null, null] }, /answers/],
      [{ kind: 'phq9', answers: [0, 0, 0, 0, 0, 0, 0] }, /answers/],
      [{ kind: 'bdi', answers: [] }, /kind/],
      [{ kind: 'phq9', answers: [0, 0, 0, 0, 0, 0, 0, 0, 0], extra: 1 }, /extra/],
      [null, /assessment/],
    ];
    for (const [input, message] of bad) {
      const r = parseAssessment(input);
      expect(r.ok, JSON.stringify(input)).toBe(false);
      if (r.ok) continue;
      expect(r.error.code).toBe(ErrorCode.SCHEMA);
      expect(r.error.message).toMatch(message);
    }
    const good = parseAssessment({ kind: 'phq9', answers: [0, 0, 0, 0, 0, 0, 0, 0, 2] });
    expect(good.ok && detectCrisis(good.value).crisis).toBe(true);
  });

  it('crisis exactly when a threshold is crossed (property)', () => {
    const answers = (n: number) => fc.array(fc.integer({ min: 0, max: 3 }), { minLength: n, maxLength: n });
    fc.assert(
      fc.property(answers(9), answers(7), (p, g) => {
        const sumP = p.reduce((a, b) => a + b, 0);
        const sumG = g.reduce((a, b) => a + b, 0);
        const rp = phq9(p);
        expect(rp.crisis).toBe(sumP >= 20 || (p[8] ?? 0) > 0);
        expect(rp.priority).toBe(rp.crisis ? 9 : 6);
        expect(gad7(g).crisis).toBe(sumG >= 15);
      }),
      { seed: 9, numRuns: 500 },
    );
  });

  it('a partial form: item 9 above 0 is a crisis the moment it is given; totals wait for the last answer', () => {
    const onlyItem9 = phq9([null, null, null, null, null, null, null, null, 1]);
    expect(onlyItem9).toEqual({ crisis: true, total: 1, complete: false, reasons: ['phq9_item9'], priority: Priority.CRISIS_ASSESSMENT });
    // 24 points over eight answers, item 9 still open: a partial total is not the score.
    const high = phq9([3, 3, 3, 3, 3, 3, 3, 3, null]);
    expect(high).toEqual({ crisis: false, total: 24, complete: false, reasons: [], priority: Priority.ASSESSMENT_DATA });
    expect(phq9([3, 3, 3, 3, 3, 3, 3, 3, 0]).reasons).toEqual(['phq9_total']);
    expect(phq9([null, null, null, null, null, null, null, null, 0]).crisis).toBe(false);
    expect(gad7([3, 3, 3, 3, 3, null, null]).crisis).toBe(false);
    expect(gad7([3, 3, 3, 3, 3, 0, 0]).crisis).toBe(true);
    expect(gad7(Array<Answer>(7).fill(null))).toEqual({ crisis: false, total: 0, complete: false, reasons: [], priority: 6 });
    const parsed = parseAssessment({ kind: 'phq9', answers: [1, null, 2, null, null, null, null, null, 3] });
    expect(parsed.ok && isComplete(parsed.value)).toBe(false);
    expect(parsed.ok && detectCrisis(parsed.value).crisis).toBe(true);
  });

  it('partial forms: crisis exactly by the rules, and answering more never takes it back (property)', () => {
    const slots = (n: number) => fc.array(fc.option(fc.integer({ min: 0, max: 3 }), { nil: null }), { minLength: n, maxLength: n });
    const sum = (xs: readonly Answer[]) => xs.reduce<number>((a, b) => a + (b ?? 0), 0);
    /** `xs` with some of its open slots answered. */
    const fillSome = (xs: readonly Answer[], fill: readonly (Answer | undefined)[]) => xs.map((x, i) => (x === null && fill[i] !== undefined ? fill[i]! : x));
    const fills = (n: number) => fc.array(fc.option(fc.integer({ min: 0, max: 3 }), { nil: undefined }), { minLength: n, maxLength: n });
    fc.assert(
      fc.property(slots(9), fills(9), slots(7), fills(7), (p, pFill, g, gFill) => {
        const completeP = p.every((x) => x !== null);
        const rp = phq9(p);
        expect(rp.complete).toBe(completeP);
        expect(rp.total).toBe(sum(p));
        expect(rp.crisis).toBe((p[8] ?? 0) > 0 || (completeP && sum(p) >= 20));
        expect(rp.priority).toBe(rp.crisis ? 9 : 6);
        const rg = gad7(g);
        expect(rg.crisis).toBe(g.every((x) => x !== null) && sum(g) >= 15);
        // Monotone: a crisis seen while filling in stays a crisis once more is answered.
        if (rp.crisis) expect(phq9(fillSome(p, pFill)).crisis).toBe(true);
        if (rg.crisis) expect(gad7(fillSome(g, gFill)).crisis).toBe(true);
        // Whatever the form holds, it parses, and detection agrees with what was parsed.
        const parsed = parseAssessment({ kind: 'phq9', answers: p });
        expect(parsed.ok && detectCrisis(parsed.value).crisis).toBe(rp.crisis);
      }),
      { seed: 11, numRuns: 1000 },
    );
  });
});
