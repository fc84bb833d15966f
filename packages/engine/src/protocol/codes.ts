/**
 * Every error Keel puts on the wire, with a stable string code. Codes never change meaning;
 * new ones are added at the end of a group.
 */
export const ErrorCode = {
  // Frame level: the bytes could not become a valid frame.
  BAD_JSON: 'BAD_JSON',
  BINARY_FRAME: 'BINARY_FRAME',
  UNKNOWN_TYPE: 'UNKNOWN_TYPE',
  SCHEMA: 'SCHEMA',
  FRAME_TOO_LARGE: 'FRAME_TOO_LARGE',
  UNSUPPORTED_VERSION: 'UNSUPPORTED_VERSION',
  UNEXPECTED_FRAME: 'UNEXPECTED_FRAME',
  /** A frame nested deeper, or holding more values, than any protocol frame needs: refused before it is parsed. */
  JSON_BUDGET: 'JSON_BUDGET',
  // Authentication and authorization.
  NOT_AUTHENTICATED: 'NOT_AUTHENTICATED',
  AUTH_FAILED: 'AUTH_FAILED',
  AUTH_TIMEOUT: 'AUTH_TIMEOUT',
  UNKNOWN_DEVICE: 'UNKNOWN_DEVICE',
  BAD_CERTIFICATE: 'BAD_CERTIFICATE',
  NOT_AUTHORIZED: 'NOT_AUTHORIZED',
  DEVICE_REVOKED: 'DEVICE_REVOKED',
  PAIRING_NOT_FOUND: 'PAIRING_NOT_FOUND',
  PAIRING_EXPIRED: 'PAIRING_EXPIRED',
  PAIRING_USED: 'PAIRING_USED',
  PAIRING_REFUSED: 'PAIRING_REFUSED',
  /** Final, raised by a device: the relay's challenge names another deployment than the one pinned. */
  RELAY_MISMATCH: 'RELAY_MISMATCH',
  /** The relay did not answer a liveness ping in time: the link is taken for dead and rebuilt (device-side). */
  LINK_DEAD: 'LINK_DEAD',
  /** Not 12 BIP39 English words with a valid checksum, nor a `keel-recovery:` code. */
  RECOVERY_PHRASE_INVALID: 'RECOVERY_PHRASE_INVALID',
  /** No user of this relay has this recovery key (or the user was created before recovery keys). */
  RECOVERY_UNKNOWN: 'RECOVERY_UNKNOWN',
  /** A reset statement whose generation is not the user's last + 1: replayed or stale. */
  RECOVERY_REPLAYED: 'RECOVERY_REPLAYED',
  /** A reset not signed by the user's recovery key, or one that does not keep the device presenting it. */
  RECOVERY_INVALID: 'RECOVERY_INVALID',
  /** Final: this relay creates users only with a signup token (`--registration token`) and the new user's first device presented none. */
  SIGNUP_TOKEN_REQUIRED: 'SIGNUP_TOKEN_REQUIRED',
  /** Final: the signup token is unknown to this relay, already used, or expired. */
  SIGNUP_TOKEN_INVALID: 'SIGNUP_TOKEN_INVALID',
  /**
   * Final: the relay's operator deleted this user (`keel-relay user delete`); the user's devices
   * may not create it again. The app should tell the person and offer to wipe the device.
   */
  ACCOUNT_DELETED: 'ACCOUNT_DELETED',
  // Envelope integrity.
  BAD_SIGNATURE: 'BAD_SIGNATURE',
  WRONG_AUTHOR: 'WRONG_AUTHOR',
  COUNTER_GAP: 'COUNTER_GAP',
  COUNTER_REUSED: 'COUNTER_REUSED',
  DECRYPT_FAILED: 'DECRYPT_FAILED',
  BAD_PAYLOAD: 'BAD_PAYLOAD',
  UNKNOWN_EPOCH: 'UNKNOWN_EPOCH',
  /** A snapshot that covers no more than the relay's latest, or more than the log holds. */
  SNAPSHOT_REFUSED: 'SNAPSHOT_REFUSED',
  /**
   * An envelope on a lane above its document class's ceiling (bulk data labelled as crisis, say):
   * refused by the receiving device, neither applied nor staged (device-side).
   */
  LANE_MISMATCH: 'LANE_MISMATCH',
  /** Awareness sealed more than 30 s from now, or not newer than one already applied from its device (a replay). */
  STALE: 'STALE',
  // Limits.
  RATE_LIMITED: 'RATE_LIMITED',
  QUOTA_EXCEEDED: 'QUOTA_EXCEEDED',
  TOO_MANY_ERRORS: 'TOO_MANY_ERRORS',
  /** A bounded record or resource (devices, key epochs, pairing sessions, subscriptions, connections) is full. */
  LIMIT_EXCEEDED: 'LIMIT_EXCEEDED',
  /** The relay is at a global limit (unauthenticated connections); retry later. */
  OVERLOADED: 'OVERLOADED',
  // The relay's own fault; the client retries.
  INTERNAL: 'INTERNAL',
  SHUTTING_DOWN: 'SHUTTING_DOWN',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * WebSocket close codes the relay uses. 1000–1011 are RFC 6455; 4000–4999 are Keel's own.
 * A client reconnects after any of them except those marked final.
 */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  /** ws closes with this itself when a frame exceeds maxPayload. */
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  /** The peer sent more bad frames (or forged envelopes) on one connection than allowed. */
  PROTOCOL_ABUSE: 4000,
  /** Final: challenge-response failed or the device is unknown. */
  AUTH_FAILED: 4001,
  /** Authentication did not finish in time. */
  AUTH_TIMEOUT: 4002,
  /** Final: the device was revoked. */
  DEVICE_REVOKED: 4003,
  /** Final: the client speaks a protocol version the relay does not. */
  UNSUPPORTED_VERSION: 4004,
  /** Final: a pairing code was unknown, expired, already used or refused. */
  PAIRING_FAILED: 4005,
  /** A pairing finished: the new device got its grant and reconnects with its identity. */
  PAIRED: 4006,
  /**
   * The device did not read what the relay sent (its outgoing queue passed its bound). Not
   * final: the device reconnects and catches up from the log, so nothing is lost.
   */
  SLOW_CONSUMER: 4007,
  /** The relay is at its limit of unauthenticated connections (RFC 6455 "try again later"). */
  TRY_AGAIN_LATER: 1013,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** Close codes after which reconnecting cannot help. */
export const FINAL_CLOSE_CODES: ReadonlySet<number> = new Set([
  CloseCode.AUTH_FAILED,
  CloseCode.DEVICE_REVOKED,
  CloseCode.UNSUPPORTED_VERSION,
  CloseCode.PAIRING_FAILED,
]);

export interface KeelError {
  readonly code: ErrorCode;
  readonly message: string;
}

export type Result<T, E = KeelError> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: E };

export const ok = <T>(value: T): Result<T, never> => ({ ok: true, value });
export const err = (code: ErrorCode, message: string): Result<never> => ({ ok: false, error: { code, message } });
