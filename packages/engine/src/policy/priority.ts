import { type DocClass, Priority, basePriority, isCrisisLane } from './classes.js';
import type { Lane } from '../protocol/ids.js';
import type { TierName, TierPolicy } from './tiers.js';

export interface PriorityInput {
  readonly docClass: DocClass;
  readonly tier: TierName;
  readonly policy: TierPolicy;
  /** The user's devices are in crisis mode (the user or an external crisis signal set it). */
  readonly crisisMode: boolean;
  /** A therapeutic session (MBCT, breathing exercise) is running in this document. */
  readonly sessionActive: boolean;
  /** The document holds an assessment that crossed a crisis threshold (see `detectCrisis`). */
  readonly crisisAssessment?: boolean;
}

/** Clamps a tier cap into 1..10; the schema already does, a hand-built policy might not. */
const clampPriority = (n: number): Priority => Math.min(10, Math.max(1, Math.floor(n))) as Priority;

/**
 * The priority a document's updates are scheduled with, by docs/design.md's "Rules that no tier
 * changes", in this order:
 * 1. A crisis class (base 10 or 9) keeps its base on every tier.
 * 2. A document flagged `crisisAssessment` is CRISIS_ASSESSMENT (9) on every tier, whatever
 *    its class: the flag says it holds a crisis-level assessment, and crisis is never weakened.
 * 3. A THERAPEUTIC_ACTIVE-class document (base 8) with `sessionActive` is escalated to 8 when
 *    the tier allows escalation, during a grace period (therapeutic continuity), and on every
 *    tier while `crisisMode` is on (a person in crisis keeps their exercise in sync).
 * 4. Everything else: its base, capped by `policy.tierPriority`.
 */
export const effectivePriority = (input: PriorityInput): Priority => {
  const base = basePriority(input.docClass);
  if (isCrisisLane(base)) return base;
  if (input.crisisAssessment === true) return Priority.CRISIS_ASSESSMENT;
  if (base === Priority.THERAPEUTIC_ACTIVE && input.sessionActive) {
    if (input.policy.escalation || input.tier === 'grace_period' || input.crisisMode) return Priority.THERAPEUTIC_ACTIVE;
  }
  return clampPriority(Math.min(base, input.policy.tierPriority));
};

/**
 * Classes whose documents hold assessment forms, so can cross a crisis threshold and sync at
 * CRISIS_ASSESSMENT (rule 2 of `effectivePriority`). The client flags only these.
 */
export const mayHoldCrisisAssessment = (docClass: DocClass): boolean => docClass === 'assessment';

/**
 * The highest lane an honest device ever seals an envelope of `docClass` at: its base, 9 for a
 * class that may hold a crisis-level assessment. Whatever the tier and the sender's state
 * (crisis mode, a running session), `effectivePriority` never goes above it, and a snapshot
 * inherits the highest lane of what it holds. The relay cannot check a lane (the class is
 * hidden); a receiving device can, and refuses an envelope above its document's ceiling: it is
 * how a modified client would take the crisis lane's immediacy and quota exemption for bulk data.
 * Lanes below the base are not refused: they weaken nothing but the sender's own data.
 */
export const laneCeiling = (docClass: DocClass): Priority =>
  mayHoldCrisisAssessment(docClass) ? Priority.CRISIS_ASSESSMENT : basePriority(docClass);

/** Whether an envelope of `docClass` may honestly carry `lane` (see `laneCeiling`). */
export const laneFits = (docClass: DocClass, lane: Lane | number): boolean => lane <= laneCeiling(docClass);
