import type { DeviceId, RelayFrame } from '@keel/engine';
import type { RevocationRecords } from '../storage/relay-store.js';

export type RevokedFrame = Extract<RelayFrame, { type: 'revoked' }>;

/**
 * The `revoked` frame for a device with the signed records its revocation stands on: a device
 * believes a revocation only from a record it verified, never from the relay's word (or a 4003
 * close) alone. Undefined when the relay keeps no record for it (revoked before it kept them).
 */
export const revokedNotice = (device: DeviceId, records: RevocationRecords): RevokedFrame | undefined =>
  records.revocation || records.reset
    ? {
        type: 'revoked',
        device,
        ...(records.revocation ? { revocation: records.revocation } : {}),
        ...(records.reset ? { reset: records.reset } : {}),
      }
    : undefined;
