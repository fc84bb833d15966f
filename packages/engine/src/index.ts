// @keel/engine — the pure core shared by relay and client.
export { toB64, fromB64, b64Length, b64ByteLength, encodeFields, bytesEqual } from './protocol/bytes.js';
export { ErrorCode, CloseCode, FINAL_CLOSE_CODES, ok, err } from './protocol/codes.js';
export { packByChars } from './protocol/packing.js';
export type { KeelError, Result } from './protocol/codes.js';
export {
  UserIdSchema,
  DeviceIdSchema,
  DocIdSchema,
  SeqSchema,
  CounterSchema,
  EpochSchema,
  LaneSchema,
  RelayIdSchema,
  asUserId,
  asDeviceId,
  asDocId,
  asSeq,
} from './protocol/ids.js';
export type { UserId, DeviceId, DocId, Seq, Lane, RelayId } from './protocol/ids.js';
export {
  PROTOCOL_VERSION,
  WireLimits,
  EnvelopeSchema,
  EnvelopeKindSchema,
  DeviceCertificateSchema,
  CertificateIssuerSchema,
  TierStateSchema,
  AwarenessEnvelopeSchema,
  AwarenessFrameSchema,
  AwarenessGoneFrameSchema,
  ClientFrameSchema,
  RelayFrameSchema,
  CrisisSignalSchema,
  parseClientFrame,
  readClientFrame,
  validateClientFrame,
  parseRelayFrame,
  encodeFrame,
  describeIssues,
  maxPartPayloadBytes,
  inboundFrameBudget,
  clampRelayFrameLimit,
  SignupTokenSchema,
} from './protocol/frames.js';
export { assertNever } from './protocol/assert-never.js';
export { checkJsonBudget, RELAY_FRAME_JSON_BUDGET } from './protocol/json-budget.js';
export type { JsonBudget } from './protocol/json-budget.js';
export type {
  Envelope,
  EnvelopeKind,
  DeviceCertificate,
  CertificateIssuer,
  ClientFrame,
  RelayFrame,
  HelloFrame,
  PushFrame,
  ReceiptFrame,
  CrisisSignal,
  ReportFrame,
  AckFrame,
  UpdatesFrame,
  UpdatesItem,
  LogItem,
  OwnItem,
  ErrorFrame,
  RejectFrame,
  TierState,
  RawFrame,
  AwarenessEnvelope,
  AwarenessFrame,
} from './protocol/frames.js';
export { cryptoReady, getSodium } from './crypto/sodium.js';
export type { Sodium } from './crypto/sodium.js';
export {
  ROOT_KEY_BYTES,
  generateRootKey,
  deriveUserKeys,
  generateDeviceKeys,
  userIdFromKey,
  deviceIdFromKey,
  deriveDocId,
  deriveEpochZeroSecret,
  deriveDocKey,
} from './crypto/keys.js';
export type { UserKeys, DeviceKeys } from './crypto/keys.js';
export {
  certifyFirstDevice,
  certifyDevice,
  certifyByRecovery,
  checkCertificateIds,
  verifyCertificateSignature,
  verifyCertificateChain,
} from './crypto/certificates.js';
export { CHALLENGE_BYTES, createChallengeNonce, signChallenge, verifyChallenge } from './crypto/auth.js';
export { sealEnvelope, openEnvelope, decryptEnvelope, verifyEnvelopeSignature, envelopeSignedBytes, maxPaddedPayloadBytes } from './crypto/envelope.js';
export type { EnvelopeHeader, SealOptions, OpenOptions } from './crypto/envelope.js';
export { sealAwareness, openAwareness, verifyAwarenessSignature, isAwarenessStale } from './crypto/awareness.js';
export type { AwarenessHeader } from './crypto/awareness.js';
export {
  Priority,
  SLA_MS,
  DOC_CLASS_PRIORITY,
  DocClassSchema,
  basePriority,
  isCrisisLane,
  isCrisisClass,
} from './policy/classes.js';
export type { DocClass } from './policy/classes.js';
export {
  TierNameSchema,
  TIER_NAMES,
  TierPolicySchema,
  DEFAULT_TIERS,
  TierMatrixSchema,
  TierOverridesSchema,
  resolveTierMatrix,
} from './policy/tiers.js';
export type { TierName, TierPolicy, TierMatrix, TierOverrides } from './policy/tiers.js';
export { signCrisisSignal, verifyCrisisSignal } from './crypto/crisis-signal.js';
export type { CrisisSignalStatement } from './crypto/crisis-signal.js';
export { effectivePriority, laneCeiling, laneFits, mayHoldCrisisAssessment } from './policy/priority.js';
export type { PriorityInput } from './policy/priority.js';
export {
  Phq9AnswersSchema,
  Gad7AnswersSchema,
  AssessmentSchema,
  CrisisThreshold,
  scorePhq9,
  scoreGad7,
  detectCrisis,
  isComplete,
  parseAssessment,
} from './policy/crisis.js';
export type { Answer, Assessment, CrisisReason, CrisisDetection } from './policy/crisis.js';
export {
  createScheduler,
  bulkRateBytesPerSec,
  DEFAULT_CRISIS_RESERVE_FRACTION,
  DEFAULT_AGING_MS,
} from './scheduler/scheduler.js';
export type { Scheduler, SchedulerClock, SchedulerOptions, Dispatch } from './scheduler/scheduler.js';
export { encodeSnapshotPayload, decodeSnapshotPayload } from './sync/snapshot.js';
export type { SnapshotPayload } from './sync/snapshot.js';
export {
  PAIRING_ID_BYTES,
  PAIRING_SECRET_BYTES,
  createPairingCode,
  parsePairingCode,
  pairingProof,
  verifyPairingProof,
  sealToDevice,
  openFromDevice,
} from './crypto/pairing.js';
export type { PairingSecret } from './crypto/pairing.js';
export {
  EpochRecordSchema,
  RevocationSchema,
  MAX_EPOCH_RECIPIENTS,
  generateEpochSecret,
  createEpochRecord,
  verifyEpochRecord,
  openEpochRecord,
  signRevocation,
  verifyRevocation,
} from './crypto/epochs.js';
export type { EpochRecord, Revocation } from './crypto/epochs.js';
export {
  RECOVERY_ENTROPY_BYTES,
  RECOVERY_CODE_PREFIX,
  MAX_RESET_KEEP,
  RecoveryResetSchema,
  RecoverySealedSchema,
  createRecoverySecret,
  parseRecoveryPhrase,
  deriveRecoveryKeys,
  sealToRecoveryKey,
  sealRootKeyEscrow,
  openRootKeyEscrow,
  openEpochRecoveryWrap,
  signRecoveryReset,
  verifyRecoveryReset,
} from './crypto/recovery.js';
export type { RecoverySecret, RecoveryKeys, RecoveryReset } from './crypto/recovery.js';
export { BreathPhaseKindSchema, BreathPhaseSchema, BreathingPatternSchema, BREATHING_PATTERNS, breathingCycleMs, breathingPhaseAt } from './handoff/breathing.js';
export type { BreathPhaseKind, BreathPhase, BreathingPattern, BreathingPatternName, BreathingPhase } from './handoff/breathing.js';
export {
  SessionIdSchema,
  SessionRecordSchema,
  BreathingSessionRecordSchema,
  AssessmentSessionRecordSchema,
  AssessmentInstrumentSchema,
  ASSESSMENT_ITEM_COUNT,
  MAX_SESSION_ELAPSED_MS,
  captureSession,
  restoreSession,
  parseSessionRecord,
} from './handoff/session.js';
export type {
  SessionRecord,
  SessionKind,
  SessionState,
  SessionRecordOf,
  BreathingSessionRecord,
  BreathingSessionState,
  AssessmentSessionRecord,
  AssessmentSessionState,
  AssessmentInstrument,
  RestoredSession,
  RestoredBreathingSession,
  RestoredAssessmentSession,
} from './handoff/session.js';
export {
  PresenceRecordSchema,
  PresenceSessionKindSchema,
  PRESENCE_STALE_AFTER_MS,
  isPresenceLive,
  hasActiveTherapeuticSession,
  rankDevices,
  resolveActiveSession,
  parsePresenceRecord,
} from './handoff/device-rank.js';
export type { PresenceRecord, PresenceSessionKind, RankOptions } from './handoff/device-rank.js';
