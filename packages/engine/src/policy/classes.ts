import * as z from 'zod';
import type { Lane } from '../protocol/ids.js';

/** Priority levels of docs/design.md; higher syncs first. */
export const Priority = {
  CRISIS_EMERGENCY: 10,
  CRISIS_ASSESSMENT: 9,
  THERAPEUTIC_ACTIVE: 8,
  PREMIUM_REALTIME: 7,
  ASSESSMENT_DATA: 6,
  USER_PROFILE: 5,
  BASIC_FEATURES: 4,
  BACKGROUND_SYNC: 3,
  MAINTENANCE: 2,
  DEFERRED: 1,
} as const satisfies Record<string, Lane>;
export type Priority = (typeof Priority)[keyof typeof Priority];

/** Write on device A → applied on device B, per priority (docs/design.md). `null`: no deadline. */
export const SLA_MS: Readonly<Record<Priority, number | null>> = {
  10: 200,
  9: 200,
  8: 500,
  7: 500,
  6: 1_000,
  5: 2_000,
  4: 5_000,
  3: 30_000,
  2: 60_000,
  1: null,
};

/** Document classes and the base priority each one fixes. */
export const DOC_CLASS_PRIORITY = {
  safety_plan: Priority.CRISIS_EMERGENCY,
  crisis_contacts: Priority.CRISIS_EMERGENCY,
  crisis_mode: Priority.CRISIS_EMERGENCY,
  crisis_resources: Priority.CRISIS_EMERGENCY,
  crisis_assessment: Priority.CRISIS_ASSESSMENT,
  therapeutic_session: Priority.THERAPEUTIC_ACTIVE,
  breathing_session: Priority.THERAPEUTIC_ACTIVE,
  // Device presence (who is active, which session each device holds) decides where a session
  // continues, so it travels with the sessions. Encrypted like every document; on tiers without
  // cross-device sync it stays on the device, as those tiers intend.
  presence: Priority.THERAPEUTIC_ACTIVE,
  premium_feature: Priority.PREMIUM_REALTIME,
  analytics: Priority.PREMIUM_REALTIME,
  assessment: Priority.ASSESSMENT_DATA,
  mood: Priority.ASSESSMENT_DATA,
  profile: Priority.USER_PROFILE,
  preferences: Priority.USER_PROFILE,
  subscription: Priority.USER_PROFILE,
  checkin: Priority.BASIC_FEATURES,
  history: Priority.BACKGROUND_SYNC,
  content_cache: Priority.BACKGROUND_SYNC,
  maintenance: Priority.MAINTENANCE,
  misc: Priority.DEFERRED,
} as const satisfies Record<string, Priority>;

export const DocClassSchema = z.enum(Object.keys(DOC_CLASS_PRIORITY) as [keyof typeof DOC_CLASS_PRIORITY, ...(keyof typeof DOC_CLASS_PRIORITY)[]]);
export type DocClass = z.infer<typeof DocClassSchema>;

export const basePriority = (docClass: DocClass): Priority => DOC_CLASS_PRIORITY[docClass];

/** Crisis lanes (10 and 9) bypass every tier limit, on the device and on the relay. */
export const isCrisisLane = (lane: number): boolean => lane >= Priority.CRISIS_ASSESSMENT;

export const isCrisisClass = (docClass: DocClass): boolean => isCrisisLane(basePriority(docClass));
