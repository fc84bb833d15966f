/**
 * Domain-separation labels. Each signature and each derived key is bound to exactly one label,
 * so a signature made for one purpose can never be replayed as another.
 */
export const Domain = {
  envelopeSignature: 'keel/envelope-sig/v1',
  envelopeAead: 'keel/envelope-aead/v1',
  deviceCertificate: 'keel/device-cert/v1',
  authChallenge: 'keel/auth/v1',
  userId: 'keel/user-id/v1',
  docId: 'keel/doc-id/v1',
  docKey: 'keel/doc-key/v1',
  pairingJoin: 'keel/pairing-join/v1',
  pairingGrant: 'keel/pairing-grant/v1',
  revocation: 'keel/revocation/v1',
  epochRecord: 'keel/epoch-record/v1',
  epochWrap: 'keel/epoch-wrap/v1',
  /** Seed of the recovery key pair, from the 16 bytes behind the 12 words. */
  recoveryKey: 'keel/recovery-key/v1',
  /** A reset statement signed by the recovery key. */
  recoveryReset: 'keel/recovery-reset/v1',
  /** The root key sealed to the recovery key (the escrow the relay keeps). */
  rootEscrow: 'keel/root-escrow/v1',
  /** An epoch secret sealed to the recovery key inside an epoch record. */
  epochRecoveryWrap: 'keel/epoch-recovery-wrap/v1',
  /** An awareness frame's signature: never valid as an envelope's, nor the other way round. */
  awarenessSignature: 'keel/awareness-sig/v1',
  /** An awareness frame's AEAD associated data. */
  awarenessAead: 'keel/awareness-aead/v1',
  /** An external crisis signal, signed by the operator's crisis authority key. */
  crisisSignal: 'keel/crisis-signal/v1',
} as const;

/** libsodium crypto_kdf contexts: exactly 8 characters each. */
export const KdfContext = {
  userSigning: 'keelusr1',
  docIds: 'keeldoc1',
  epochZero: 'keelepo1',
} as const;
