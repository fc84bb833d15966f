import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BREATHING_PATTERNS,
  BreathingPatternSchema,
  ErrorCode,
  MAX_SESSION_ELAPSED_MS,
  asDeviceId,
  breathingCycleMs,
  breathingPhaseAt,
  captureSession,
  parsePresenceRecord,
  parseSessionRecord,
  rankDevices,
  resolveActiveSession,
  restoreSession,
} from '@keel/engine';
import type { BreathPhaseKind, BreathingPattern, BreathingSessionState, DeviceId, PresenceRecord } from '@keel/engine';

const deviceOf = (i: number): DeviceId => asDeviceId(`d_${String(i).padStart(22, '0')}`);
const A = deviceOf(1);
const B = deviceOf(2);
const C = deviceOf(3);

const patternArb: fc.Arbitrary<BreathingPattern> = fc
  .array(fc.record({ kind: fc.constantFrom<BreathPhaseKind>('inhale', 'hold', 'exhale', 'rest'), ms: fc.integer({ min: 500, max: 60_000 }) }), {
    minLength: 0,
    maxLength: 6,
  })
  .map((rest) => ({ name: 'random', phases: [{ kind: 'inhale' as const, ms: 4000 }, ...rest, { kind: 'exhale' as const, ms: 6000 }] }));

describe('breathing patterns', () => {
  it('the named patterns have the clinical timings and are valid', () => {
    expect(breathingCycleMs(BREATHING_PATTERNS.box)).toBe(16_000);
    expect(breathingCycleMs(BREATHING_PATTERNS['4-7-8'])).toBe(19_000);
    expect(BREATHING_PATTERNS['4-7-8'].phases.map((p) => [p.kind, p.ms])).toEqual([
      ['inhale', 4000],
      ['hold', 7000],
      ['exhale', 8000],
    ]);
    expect(BREATHING_PATTERNS.coherent.phases.map((p) => p.ms)).toEqual([5500, 5500]);
    for (const p of Object.values(BREATHING_PATTERNS)) expect(BreathingPatternSchema.safeParse(p).success).toBe(true);
  });

  it('rejects patterns nobody can follow', () => {
    const bad = [
      { name: 'no exhale', phases: [{ kind: 'inhale', ms: 4000 }, { kind: 'hold', ms: 4000 }] },
      { name: 'too fast', phases: [{ kind: 'inhale', ms: 100 }, { kind: 'exhale', ms: 4000 }] },
      { name: 'too slow', phases: [{ kind: 'inhale', ms: 4000 }, { kind: 'exhale', ms: 120_000 }] },
      { name: 'too many', phases: Array.from({ length: 9 }, (_, i) => ({ kind: i % 2 ? 'exhale' : 'inhale', ms: 1000 })) },
      { name: '', phases: [{ kind: 'inhale', ms: 4000 }, { kind: 'exhale', ms: 4000 }] },
      { name: 'extra', phases: [{ kind: 'inhale', ms: 4000 }, { kind: 'exhale', ms: 4000 }], colour: 'blue' },
    ];
    for (const p of bad) expect(BreathingPatternSchema.safeParse(p).success, p.name).toBe(false);
  });

  it('finds the phase of 4-7-8 at its boundaries', () => {
    const p = BREATHING_PATTERNS['4-7-8'];
    expect(breathingPhaseAt(p, 0)).toEqual({ phaseIndex: 0, kind: 'inhale', phaseElapsedMs: 0, phaseRemainingMs: 4000, cycle: 0 });
    expect(breathingPhaseAt(p, 3999)).toMatchObject({ phaseIndex: 0, phaseRemainingMs: 1 });
    expect(breathingPhaseAt(p, 4000)).toMatchObject({ phaseIndex: 1, kind: 'hold', phaseElapsedMs: 0 });
    expect(breathingPhaseAt(p, 11_000)).toMatchObject({ phaseIndex: 2, kind: 'exhale', phaseElapsedMs: 0, phaseRemainingMs: 8000 });
    expect(breathingPhaseAt(p, 19_000 * 3 + 5000)).toEqual({ phaseIndex: 1, kind: 'hold', phaseElapsedMs: 1000, phaseRemainingMs: 6000, cycle: 3 });
    // Garbage time counts as the start, never as a crash.
    for (const t of [-5, Number.NaN, Number.NEGATIVE_INFINITY]) expect(breathingPhaseAt(p, t)).toMatchObject({ phaseIndex: 0, phaseElapsedMs: 0, cycle: 0 });
  });

  it('the phase found adds back up to the elapsed time (property)', () => {
    fc.assert(
      fc.property(patternArb, fc.double({ min: 0, max: MAX_SESSION_ELAPSED_MS, noNaN: true }), (pattern, elapsed) => {
        const at = breathingPhaseAt(pattern, elapsed);
        const phase = pattern.phases[at.phaseIndex]!;
        expect(at.kind).toBe(phase.kind);
        expect(at.phaseElapsedMs).toBeGreaterThanOrEqual(0);
        expect(at.phaseRemainingMs).toBeGreaterThan(0);
        expect(at.phaseElapsedMs + at.phaseRemainingMs).toBeCloseTo(phase.ms, 6);
        const before = pattern.phases.slice(0, at.phaseIndex).reduce((s, p) => s + p.ms, 0);
        expect(at.cycle * breathingCycleMs(pattern) + before + at.phaseElapsedMs).toBeCloseTo(elapsed, 3);
      }),
      { seed: 478, numRuns: 500 },
    );
  });
});

const breathing = (over: Partial<BreathingSessionState> = {}): BreathingSessionState => ({
  kind: 'breathing',
  sessionId: 's-1',
  pattern: BREATHING_PATTERNS['4-7-8'],
  startedAt: 1_000_000,
  elapsedMs: 1300,
  running: true,
  ...over,
});

describe('session capture and restore', () => {
  it('a running exercise resumes where it got to meanwhile; a paused one where it stopped', () => {
    const record = captureSession(breathing(), 2_000_000, A);
    expect(record).toMatchObject({ kind: 'breathing', capturedAt: 2_000_000, device: A, elapsedMs: 1300 });
    const later = restoreSession(record, 2_003_000);
    expect(later).toMatchObject({ kind: 'breathing', elapsedMs: 4300, from: A, handoffGapMs: 3000, startedAt: 1_000_000 });
    expect(later.kind === 'breathing' && later.phase).toMatchObject({ phaseIndex: 1, kind: 'hold', phaseElapsedMs: 300 });

    const paused = restoreSession(captureSession(breathing({ running: false }), 2_000_000, A), 2_060_000);
    expect(paused).toMatchObject({ elapsedMs: 1300, running: false, handoffGapMs: 60_000 });
  });

  it('clamps a restoring clock that is behind the capturing one: the exercise never rewinds', () => {
    const record = captureSession(breathing(), 2_000_000, A);
    expect(restoreSession(record, 1_999_200)).toMatchObject({ elapsedMs: 1300, handoffGapMs: 0 });
  });

  it('a half-filled PHQ-9 continues at the same item with the same answers', () => {
    const answers = [2, 1, 3, 0, null, null, null, null, null];
    const record = captureSession({ kind: 'assessment', sessionId: 'phq', instrument: 'phq9', answers, currentItem: 4 }, 5000, A);
    const restored = restoreSession(JSON.parse(JSON.stringify(record)), 9000);
    expect(restored).toEqual({ kind: 'assessment', sessionId: 'phq', instrument: 'phq9', answers, currentItem: 4, from: A, capturedAt: 5000, handoffGapMs: 4000 });
  });

  it('refuses invalid states at capture and invalid records at the boundary', () => {
    expect(() => captureSession(breathing({ elapsedMs: -1 }), 0, A)).toThrow();
    expect(() => captureSession({ kind: 'assessment', sessionId: 'g', instrument: 'gad7', answers: [0, 0, 0, 0, 0, 0, 0, 0, 0], currentItem: 0 }, 0, A)).toThrow();
    expect(() => captureSession({ kind: 'assessment', sessionId: 'g', instrument: 'gad7', answers: [0, 0, 0, 0, 0, 0, 0], currentItem: 7 }, 0, A)).toThrow();
    const good = captureSession(breathing(), 10, A);
    expect(parseSessionRecord(JSON.parse(JSON.stringify(good)))).toEqual({ ok: true, value: good });
    for (const bad of [null, 'x', { ...good, device: 'laptop' }, { ...good, pattern: { name: 'x', phases: [] } }, { ...good, extra: 1 }, { ...good, kind: 'mbct' }]) {
      const r = parseSessionRecord(bad);
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.error.code).toBe(ErrorCode.SCHEMA);
    }
  });

  it('a restored exercise is in the phase the original is in at that moment, through any chain of devices (property)', () => {
    // The original runs from t0 with elapsed e0; it is handed A → B → C at increasing times.
    fc.assert(
      fc.property(
        patternArb,
        fc.integer({ min: 0, max: 3_600_000 }),
        fc.integer({ min: 0, max: 2_000_000_000_000 }),
        fc.array(fc.integer({ min: 0, max: 120_000 }), { minLength: 1, maxLength: 4 }),
        (pattern, e0, t0, gaps) => {
          const original = (t: number) => breathingPhaseAt(pattern, e0 + (t - t0));
          let now = t0;
          let state: BreathingSessionState = { kind: 'breathing', sessionId: 's', pattern, elapsedMs: e0, running: true };
          const devices = [A, B, C];
          for (let i = 0; i < gaps.length; i++) {
            const record = captureSession(state, now, devices[i % 3]!);
            now += gaps[i]!;
            const restored = restoreSession(JSON.parse(JSON.stringify(record)), now);
            if (restored.kind !== 'breathing') throw new Error('kind changed');
            expect(restored.phase).toEqual(original(now));
            state = restored;
          }
        },
      ),
      { seed: 20261125, numRuns: 300 },
    );
  });
});

const presence = (device: DeviceId, over: Partial<PresenceRecord> = {}): PresenceRecord => ({
  device,
  active: true,
  lastActiveAt: 100_000,
  crisisMode: false,
  ...over,
});

describe('device rank', () => {
  const now = 100_000;
  const first = (...ps: PresenceRecord[]) => rankDevices(ps, now)[0]!.device;

  it('follows docs/design.md: therapeutic session, crisis mode, recent activity, primary, subscription', () => {
    const breathingSession = { sessionId: 's', kind: 'breathing' } as const;
    // Each criterion beats every later one.
    expect(first(presence(A, { session: breathingSession, lastActiveAt: now - 10_000 }), presence(B, { crisisMode: true, primary: true, subscriptionHolder: true }))).toBe(A);
    expect(first(presence(A, { crisisMode: true, lastActiveAt: now - 10_000 }), presence(B, { primary: true, subscriptionHolder: true }))).toBe(A);
    expect(first(presence(A, { lastActiveAt: now - 5000 }), presence(B, { lastActiveAt: now - 1000 }), presence(C, { active: false, primary: true, subscriptionHolder: true }))).toBe(B);
    expect(first(presence(A, { active: false, lastActiveAt: now - 1000 }), presence(B, { active: false, lastActiveAt: now - 9000, primary: true }))).toBe(B);
    expect(first(presence(A, { subscriptionHolder: true }), presence(B))).toBe(A);
    // An assessment is not a therapeutic session.
    expect(first(presence(A, { session: { sessionId: 'p', kind: 'assessment' }, lastActiveAt: now - 5000 }), presence(B))).toBe(B);
    // A claim that was not renewed lapses (the device may have died mid-session).
    expect(first(presence(A, { session: breathingSession, lastActiveAt: now - 120_000 }), presence(B, { active: false, lastActiveAt: now - 130_000 }), presence(C))).toBe(C);
    // Equal in everything: the device id decides, so every device agrees.
    expect(first(presence(B), presence(A))).toBe(A);
  });

  it('keeps one entry per device, the latest', () => {
    const ranked = rankDevices([presence(A, { lastActiveAt: 1 }), presence(A, { lastActiveAt: 2, crisisMode: true }), presence(B)], now);
    expect(ranked.map((p) => p.device)).toEqual([A, B]);
    expect(ranked[0]!.crisisMode).toBe(true);
  });

  it('two devices claiming a session: the active therapeutic one wins, then the rank', () => {
    const a = presence(A, { session: { sessionId: 's', kind: 'breathing' }, lastActiveAt: now - 20_000 });
    const b = presence(B, { session: { sessionId: 'p', kind: 'assessment' }, primary: true, crisisMode: true });
    expect(resolveActiveSession([b, a], now)?.device).toBe(A);
    expect(resolveActiveSession([b, a], now)?.session).toEqual({ sessionId: 's', kind: 'breathing' });
    expect(resolveActiveSession([b, presence(C, { session: { sessionId: 'q', kind: 'assessment' }, lastActiveAt: now - 1 })], now)?.device).toBe(B);
    expect(resolveActiveSession([presence(A), presence(B, { active: false, session: { sessionId: 's', kind: 'mbct' } })], now)).toBeUndefined();
  });

  const presenceArb = fc.record({
    device: fc.integer({ min: 1, max: 12 }).map(deviceOf),
    active: fc.boolean(),
    lastActiveAt: fc.integer({ min: 0, max: 200_000 }),
    session: fc.option(fc.record({ sessionId: fc.constantFrom('s', 't'), kind: fc.constantFrom('breathing', 'mbct', 'assessment') }), { nil: undefined }),
    crisisMode: fc.boolean(),
    primary: fc.option(fc.boolean(), { nil: undefined }),
    subscriptionHolder: fc.option(fc.boolean(), { nil: undefined }),
  }).map((p) => Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined)) as PresenceRecord);

  it('is a total order: independent of input order, consistent on every subset, one entry per device (property)', () => {
    fc.assert(
      fc.property(fc.array(presenceArb, { maxLength: 10 }), fc.integer({ min: 0, max: 250_000 }), fc.infiniteStream(fc.nat()), (ps, t, rand) => {
        for (const p of ps) expect(parsePresenceRecord(p).ok).toBe(true);
        const ranked = rankDevices(ps, t);
        expect(new Set(ranked.map((p) => p.device)).size).toBe(ranked.length);
        expect(ranked.length).toBe(new Set(ps.map((p) => p.device)).size);
        // Shuffled input, same order (the order cannot depend on arrival).
        const shuffled = [...ps];
        const r = rand[Symbol.iterator]();
        for (let i = shuffled.length - 1; i > 0; i--) {
          const j = (r.next().value as number) % (i + 1);
          [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
        }
        expect(rankDevices(shuffled, t)).toEqual(ranked);
        // Any sub-list ranks in the same relative order: pairwise comparisons are consistent (transitive, antisymmetric).
        const keep = ranked.filter((_, i) => i % 2 === 0);
        expect(rankDevices([...keep].reverse(), t)).toEqual(keep);
        for (let i = 0; i + 1 < ranked.length; i++) expect(rankDevices([ranked[i + 1]!, ranked[i]!], t)).toEqual([ranked[i], ranked[i + 1]]);
        // The winner of a session conflict is the best-ranked live device holding one.
        const winner = resolveActiveSession(ps, t);
        if (winner) expect(ranked.findIndex((p) => p.device === winner.device)).toBe(ranked.findIndex((p) => p.session !== undefined && p.active && t - p.lastActiveAt <= 45_000));
      }),
      { seed: 8, numRuns: 400 },
    );
  });
});
