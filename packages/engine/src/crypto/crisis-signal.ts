import { encodeFields, toB64 } from '../protocol/bytes.js';
import type { CrisisSignal } from '../protocol/frames.js';
import type { RelayId, UserId } from '../protocol/ids.js';
import { Domain } from './domains.js';
import { getSodium } from './sodium.js';
import { verifyDetached } from './signature.js';

/**
 * An external crisis signal — "this user may be in crisis: put every device of theirs into
 * crisis mode" — as a clinic's crisis service (a clinician, a hotline integration) states it.
 * The relay cannot write the user's encrypted crisis-mode document; it forwards the statement
 * and each device acts on it. Signed, when the operator set up a crisis authority key, with
 * that key over the statement bound to this deployment and user, so a device configured with
 * the authority's public key believes no relay's word for it, and a signal for one user or one
 * deployment never passes for another.
 */
export type CrisisSignalStatement = Omit<CrisisSignal, 'sig'> & { readonly relay: RelayId; readonly user: UserId };

const signedBytes = (s: CrisisSignalStatement): Uint8Array => encodeFields([Domain.crisisSignal, s.relay, s.user, s.id, s.at, s.reason]);

/** Signs a statement with the crisis authority's Ed25519 secret key (64 bytes): the `sig` of the signal. */
export const signCrisisSignal = (statement: CrisisSignalStatement, authoritySecretKey: Uint8Array): string =>
  toB64(getSodium().crypto_sign_detached(signedBytes(statement), authoritySecretKey));

/** True when one of `authorityKeys` signed this statement exactly as it is. */
export const verifyCrisisSignal = (statement: CrisisSignalStatement, sig: string, authorityKeys: readonly Uint8Array[]): boolean =>
  authorityKeys.some((key) => verifyDetached(sig, () => signedBytes(statement), key));
