import * as z from 'zod';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import { describeIssues } from '../protocol/frames.js';
import { type DeviceId, DeviceIdSchema } from '../protocol/ids.js';
import { type BreathingPhase, BreathingPatternSchema, breathingPhaseAt } from './breathing.js';

/** The app's id of one session (one exercise run, one questionnaire fill). */
export const SessionIdSchema = z.string().min(1).max(128);

/** Wall-clock milliseconds since the Unix epoch, as `Date.now()` gives them. */
const TimestampSchema = z.number().finite().min(0).max(8.64e15);

/** A breathing exercise longer than a day is a bug, not a session. */
export const MAX_SESSION_ELAPSED_MS = 24 * 60 * 60 * 1000;

/** Items per questionnaire: PHQ-9 has nine, GAD-7 seven. */
export const ASSESSMENT_ITEM_COUNT = { phq9: 9, gad7: 7 } as const;
export const AssessmentInstrumentSchema = z.enum(['phq9', 'gad7']);
export type AssessmentInstrument = z.infer<typeof AssessmentInstrumentSchema>;

export const BreathingSessionRecordSchema = z.strictObject({
  kind: z.literal('breathing'),
  sessionId: SessionIdSchema,
  pattern: BreathingPatternSchema,
  /** When the exercise began (first device's clock); informational. */
  startedAt: TimestampSchema.optional(),
  /** Running time of the exercise at `capturedAt` (pauses excluded). */
  elapsedMs: z.number().finite().min(0).max(MAX_SESSION_ELAPSED_MS),
  running: z.boolean(),
  /** The capturing device's wall clock at capture. */
  capturedAt: TimestampSchema,
  device: DeviceIdSchema,
});
export type BreathingSessionRecord = z.infer<typeof BreathingSessionRecordSchema>;

/** A questionnaire in progress: `null` for an item not answered yet, 0..3 otherwise. */
export const AssessmentSessionRecordSchema = z
  .strictObject({
    kind: z.literal('assessment'),
    sessionId: SessionIdSchema,
    instrument: AssessmentInstrumentSchema,
    answers: z.array(z.number().int().min(0).max(3).nullable()).max(9),
    /** 0-based index of the item on screen: item 5 of the PHQ-9 is 4. */
    currentItem: z.number().int().min(0).max(8),
    capturedAt: TimestampSchema,
    device: DeviceIdSchema,
  })
  .superRefine((r, ctx) => {
    const items = ASSESSMENT_ITEM_COUNT[r.instrument];
    if (r.answers.length !== items) ctx.addIssue({ code: 'custom', path: ['answers'], message: `${r.instrument} has ${items} items` });
    if (r.currentItem >= items) ctx.addIssue({ code: 'custom', path: ['currentItem'], message: `${r.instrument} has ${items} items` });
  });
export type AssessmentSessionRecord = z.infer<typeof AssessmentSessionRecordSchema>;

/** What one device hands to another: the session, when and by whom it was captured. */
export const SessionRecordSchema = z.discriminatedUnion('kind', [BreathingSessionRecordSchema, AssessmentSessionRecordSchema]);
export type SessionRecord = z.infer<typeof SessionRecordSchema>;
export type SessionKind = SessionRecord['kind'];

/** A session as the app holds it; for a running exercise `elapsedMs` is as of the capture's `now`. */
export type BreathingSessionState = Omit<BreathingSessionRecord, 'capturedAt' | 'device'>;
export type AssessmentSessionState = Omit<AssessmentSessionRecord, 'capturedAt' | 'device'>;
export type SessionState = BreathingSessionState | AssessmentSessionState;
/** The record type a state of type `S` is captured as. */
export type SessionRecordOf<S extends SessionState> = S extends BreathingSessionState ? BreathingSessionRecord : AssessmentSessionRecord;

interface Handed {
  /** The device that captured the session. */
  readonly from: DeviceId;
  readonly capturedAt: number;
  /** now − capturedAt, clamped to ≥ 0: how long the session was in transit (or parked). */
  readonly handoffGapMs: number;
}
/** A breathing exercise continued on this device, with the phase it is in right now. */
export type RestoredBreathingSession = BreathingSessionState & Handed & { readonly phase: BreathingPhase };
export type RestoredAssessmentSession = AssessmentSessionState & Handed;
export type RestoredSession = RestoredBreathingSession | RestoredAssessmentSession;

/**
 * Records a session for another device: `state` stamped with `now` (this device's wall clock)
 * and this device's id. Throws on an invalid state — the app built it, so that is a bug.
 */
export const captureSession = <S extends SessionState>(state: S, now: number, device: DeviceId): SessionRecordOf<S> =>
  captureRecord(state, now, device) as SessionRecordOf<S>;

const captureRecord = (state: SessionState, now: number, device: DeviceId): SessionRecord => {
  // Fields are picked, not spread: a restored session carries extras (phase, from) that stay local.
  const base = { sessionId: state.sessionId, capturedAt: now, device };
  if (state.kind === 'breathing') {
    return SessionRecordSchema.parse({
      kind: 'breathing',
      ...base,
      pattern: state.pattern,
      ...(state.startedAt === undefined ? {} : { startedAt: state.startedAt }),
      elapsedMs: state.elapsedMs,
      running: state.running,
    });
  }
  return SessionRecordSchema.parse({
    kind: 'assessment',
    ...base,
    instrument: state.instrument,
    answers: [...state.answers],
    currentItem: state.currentItem,
  });
};

/**
 * Continues a handed-over session at `now` (this device's wall clock). A running breathing
 * exercise resumes at `elapsedMs + (now − capturedAt)` — the phase it reached on the other
 * device meanwhile; a paused one where it stopped; an assessment at the same item with the same
 * answers.
 *
 * Clock assumption: `capturedAt` is the capturing device's wall clock and `now` this device's,
 * so the gap is exact only when the two agree (NTP keeps phones and laptops within tens of ms,
 * small against phases of seconds). A restoring clock that is behind would give a negative gap;
 * it is clamped to 0, so an exercise never rewinds past where it was handed over. One that is
 * ahead moves the exercise on by the skew.
 */
export const restoreSession = (record: SessionRecord, now: number): RestoredSession => {
  const handoffGapMs = Math.max(0, now - record.capturedAt);
  const handed = { from: record.device, capturedAt: record.capturedAt, handoffGapMs };
  if (record.kind === 'assessment') {
    return {
      kind: 'assessment',
      sessionId: record.sessionId,
      instrument: record.instrument,
      answers: [...record.answers],
      currentItem: record.currentItem,
      ...handed,
    };
  }
  // Capped so a restored exercise can be captured again (the schema bounds elapsedMs).
  const elapsedMs = record.running ? Math.min(MAX_SESSION_ELAPSED_MS, record.elapsedMs + handoffGapMs) : record.elapsedMs;
  return {
    kind: 'breathing',
    sessionId: record.sessionId,
    pattern: record.pattern,
    ...(record.startedAt === undefined ? {} : { startedAt: record.startedAt }),
    elapsedMs,
    running: record.running,
    phase: breathingPhaseAt(record.pattern, elapsedMs),
    ...handed,
  };
};

/** Validates a session record read from a document (another device wrote it); `SCHEMA` on failure. */
export const parseSessionRecord = (input: unknown): Result<SessionRecord> => {
  const parsed = SessionRecordSchema.safeParse(input);
  return parsed.success ? ok(parsed.data) : err(ErrorCode.SCHEMA, `invalid session record: ${describeIssues(parsed.error)}`);
};
