import * as z from 'zod';
import { ErrorCode, type Result, err, ok } from '../protocol/codes.js';
import { Priority } from './classes.js';

/**
 * One questionnaire answer: 0 "not at all" … 3 "nearly every day", or `null` for an item not
 * answered yet. Forms are recorded while they are being filled in, so an answer that signals a
 * crisis counts the moment it is given, not when the last item is.
 */
const AnswerSchema = z.union([z.number().int().min(0).max(3), z.null()]);
export type Answer = z.infer<typeof AnswerSchema>;

/** PHQ-9 (depression): nine slots, answered or not; item 9 asks about thoughts of self-harm. */
export const Phq9AnswersSchema = z.array(AnswerSchema).length(9);
/** GAD-7 (anxiety): seven slots, answered or not. */
export const Gad7AnswersSchema = z.array(AnswerSchema).length(7);

export const AssessmentSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('phq9'), answers: Phq9AnswersSchema }),
  z.strictObject({ kind: z.literal('gad7'), answers: Gad7AnswersSchema }),
]);
export type Assessment = z.infer<typeof AssessmentSchema>;

/**
 * Crisis thresholds of docs/design.md (priority 9, CRISIS_ASSESSMENT): PHQ-9 total ≥ 20 ("severe"),
 * any answer above 0 on PHQ-9 item 9, GAD-7 total ≥ 15 ("severe"). Item 9 applies as soon as it
 * is answered; the totals only to complete forms (a partial total is not the instrument's score).
 */
export const CrisisThreshold = {
  phq9Total: 20,
  phq9Item9: 1,
  gad7Total: 15,
} as const;

export type CrisisReason = 'phq9_total' | 'phq9_item9' | 'gad7_total';

export interface CrisisDetection {
  readonly crisis: boolean;
  /** Sum of the answers given so far; the instrument's score once `complete`. */
  readonly total: number;
  /** Every item answered. */
  readonly complete: boolean;
  /** Every threshold crossed; empty when `crisis` is false. */
  readonly reasons: readonly CrisisReason[];
  /** CRISIS_ASSESSMENT (9) on a crisis, ASSESSMENT_DATA (6) otherwise. */
  readonly priority: Priority;
}

const PHQ9_ITEM9_INDEX = 8;

const sumAnswers = (answers: readonly Answer[], expected: number, name: string): number => {
  // Inside the engine answers are trusted; a wrong length here is a caller bug.
  if (answers.length !== expected) throw new RangeError(`${name} needs ${expected} answers, got ${answers.length}`);
  return answers.reduce<number>((total, answer) => total + (answer ?? 0), 0);
};

/** PHQ-9 total of the answers given, 0..27. Answers must be validated (see {@link parseAssessment}). */
export const scorePhq9 = (answers: readonly Answer[]): number => sumAnswers(answers, 9, 'PHQ-9');

/** GAD-7 total of the answers given, 0..21. Answers must be validated (see {@link parseAssessment}). */
export const scoreGad7 = (answers: readonly Answer[]): number => sumAnswers(answers, 7, 'GAD-7');

/** Whether every item of a form is answered. */
export const isComplete = (assessment: Assessment): boolean => assessment.answers.every((answer) => answer !== null);

/**
 * Whether an assessment, complete or still being filled in, crosses a crisis threshold, why,
 * and the priority it syncs at. Answering more items never takes a crisis back: item 9 stays
 * answered, and a total counts only once nothing is left to add.
 */
export const detectCrisis = (assessment: Assessment): CrisisDetection => {
  const reasons: CrisisReason[] = [];
  const complete = isComplete(assessment);
  let total: number;
  if (assessment.kind === 'phq9') {
    total = scorePhq9(assessment.answers);
    if (complete && total >= CrisisThreshold.phq9Total) reasons.push('phq9_total');
    if ((assessment.answers[PHQ9_ITEM9_INDEX] ?? 0) >= CrisisThreshold.phq9Item9) reasons.push('phq9_item9');
  } else {
    total = scoreGad7(assessment.answers);
    if (complete && total >= CrisisThreshold.gad7Total) reasons.push('gad7_total');
  }
  const crisis = reasons.length > 0;
  return { crisis, total, complete, reasons, priority: crisis ? Priority.CRISIS_ASSESSMENT : Priority.ASSESSMENT_DATA };
};

/** Validates an assessment from the UI or storage; a `SCHEMA` error names the bad answer. */
export const parseAssessment = (input: unknown): Result<Assessment> => {
  const parsed = AssessmentSchema.safeParse(input);
  if (parsed.success) return ok(parsed.data);
  const detail = parsed.error.issues
    .slice(0, 3)
    .map((issue) => `${issue.path.map(String).join('.') || '(assessment)'}: ${issue.message}`)
    .join('; ');
  return err(ErrorCode.SCHEMA, `invalid assessment: ${detail}`);
};
