import * as z from 'zod';

/** What the person does during one phase of a breathing cycle. */
export const BreathPhaseKindSchema = z.enum(['inhale', 'hold', 'exhale', 'rest']);
export type BreathPhaseKind = z.infer<typeof BreathPhaseKindSchema>;

/**
 * Bounds of a phase. Below half a second a phase cannot be followed; above a minute a "hold" is
 * no longer a breathing exercise (clinical patterns stay well inside: 4-7-8's longest is 8 s).
 */
export const BREATH_PHASE_MIN_MS = 500;
export const BREATH_PHASE_MAX_MS = 60_000;
export const BREATH_PHASES_MAX = 8;

export const BreathPhaseSchema = z.strictObject({
  kind: BreathPhaseKindSchema,
  ms: z.number().int().min(BREATH_PHASE_MIN_MS).max(BREATH_PHASE_MAX_MS),
});
export type BreathPhase = z.infer<typeof BreathPhaseSchema>;

/** A repeating breathing cycle; it must make the person breathe (at least one inhale and one exhale). */
export const BreathingPatternSchema = z
  .strictObject({
    name: z.string().min(1).max(64),
    phases: z.array(BreathPhaseSchema).min(2).max(BREATH_PHASES_MAX),
  })
  .refine((p) => p.phases.some((ph) => ph.kind === 'inhale') && p.phases.some((ph) => ph.kind === 'exhale'), {
    message: 'a breathing pattern needs an inhale and an exhale',
    path: ['phases'],
  });
export type BreathingPattern = z.infer<typeof BreathingPatternSchema>;

const pattern = (name: string, ...phases: [BreathPhaseKind, number][]): BreathingPattern =>
  BreathingPatternSchema.parse({ name, phases: phases.map(([kind, seconds]) => ({ kind, ms: Math.round(seconds * 1000) })) });

/**
 * Named patterns the app offers. Box breathing (4-4-4-4), Weil's 4-7-8 (the hold is the long
 * part), and coherent (resonance) breathing at 5.5 s in / 5.5 s out, ≈ 5.5 breaths a minute.
 */
export const BREATHING_PATTERNS = {
  box: pattern('box', ['inhale', 4], ['hold', 4], ['exhale', 4], ['hold', 4]),
  '4-7-8': pattern('4-7-8', ['inhale', 4], ['hold', 7], ['exhale', 8]),
  coherent: pattern('coherent', ['inhale', 5.5], ['exhale', 5.5]),
} as const satisfies Record<string, BreathingPattern>;
export type BreathingPatternName = keyof typeof BREATHING_PATTERNS;

/** Where in its pattern an exercise is after `elapsedMs` of (running) time. */
export interface BreathingPhase {
  /** Index into `pattern.phases`. */
  readonly phaseIndex: number;
  readonly kind: BreathPhaseKind;
  readonly phaseElapsedMs: number;
  /** Until the next phase begins; > 0. */
  readonly phaseRemainingMs: number;
  /** Completed cycles before this one (0 during the first). */
  readonly cycle: number;
}

/** Length of one full cycle of a pattern, ms. */
export const breathingCycleMs = (pattern: BreathingPattern): number => pattern.phases.reduce((sum, p) => sum + p.ms, 0);

/**
 * The phase an exercise is in after `elapsedMs` of running time. Negative or non-finite
 * elapsed time counts as 0 (the start). The pattern must be valid ({@link BreathingPatternSchema}).
 */
export const breathingPhaseAt = (pattern: BreathingPattern, elapsedMs: number): BreathingPhase => {
  const cycleMs = breathingCycleMs(pattern);
  const elapsed = Number.isFinite(elapsedMs) && elapsedMs > 0 ? elapsedMs : 0;
  const cycle = Math.floor(elapsed / cycleMs);
  let within = elapsed - cycle * cycleMs;
  for (let i = 0; i < pattern.phases.length; i++) {
    const phase = pattern.phases[i]!;
    if (within < phase.ms) {
      return { phaseIndex: i, kind: phase.kind, phaseElapsedMs: within, phaseRemainingMs: phase.ms - within, cycle };
    }
    within -= phase.ms;
  }
  // Only floating-point rounding lands here (within ≈ cycleMs): that is the next cycle's start.
  const first = pattern.phases[0]!;
  return { phaseIndex: 0, kind: first.kind, phaseElapsedMs: 0, phaseRemainingMs: first.ms, cycle: cycle + 1 };
};
