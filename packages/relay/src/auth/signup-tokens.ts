import { createHash, randomBytes } from 'node:crypto';
import { type HelloFrame, type KeelError, ErrorCode } from '@keel/engine';
import type { RelayStore } from '../storage/relay-store.js';
import type { VerifiedCertificate } from './registration.js';

/** Who may create a user on this relay (config `registration`). */
export type RegistrationMode = 'open' | 'token';

/** The token's hash as stored: SHA-256 (a token is 32 random bytes, so no salt or slow hash is needed). */
export const hashSignupToken = (token: string): string => createHash('sha256').update(token).digest('hex');

/** A new token: `kst_` + 32 random bytes in base64url (engine `SignupTokenSchema`). */
export const newSignupToken = (): string => `kst_${randomBytes(32).toString('base64url')}`;

/** Creates a token valid for `ttlMs` and keeps only its hash. Returns the token, shown once to the operator. */
export const createSignupToken = async (store: RelayStore, now: number, ttlMs: number): Promise<{ token: string; expiresAt: number }> => {
  const token = newSignupToken();
  const expiresAt = now + ttlMs;
  await store.putSignupToken(hashSignupToken(token), expiresAt, now);
  return { token, expiresAt };
};

/**
 * Decides, after the device proved its key and before anything is registered, whether this
 * handshake may create a user. Only a chain that registers a first device (issuer null) of a
 * user the relay does not hold creates one; linked, paired and recovered devices of an existing
 * user never need a token. A user the operator deleted is never created again, whatever the
 * registration mode: its devices still hold their certificates, and would otherwise undo the
 * deletion the next time they connect. With `token` registration the token is spent here, atomically: it is
 * spent even if the registration that follows is refused (a limit), which a new user's first
 * device does not meet in practice.
 */
export const admitSignup = async (
  deps: { readonly mode: RegistrationMode; readonly store: RelayStore; readonly now: number },
  hello: Pick<HelloFrame, 'user' | 'signup'>,
  pending: readonly VerifiedCertificate[],
): Promise<KeelError | undefined> => {
  if (!pending.some((link) => link.cert.issuer === null)) return undefined;
  if (await deps.store.hasUser(hello.user)) return undefined;
  if (await deps.store.isDeletedUser(hello.user)) {
    return { code: ErrorCode.ACCOUNT_DELETED, message: "this relay's operator deleted this account; it cannot be created again" };
  }
  if (deps.mode === 'open') return undefined;
  if (hello.signup === undefined) {
    return { code: ErrorCode.SIGNUP_TOKEN_REQUIRED, message: 'this relay creates new users only with a signup token from its operator' };
  }
  const outcome = await deps.store.useSignupToken(hashSignupToken(hello.signup), deps.now);
  switch (outcome) {
    case 'accepted':
      return undefined;
    case 'unknown':
      return { code: ErrorCode.SIGNUP_TOKEN_INVALID, message: 'this relay issued no such signup token' };
    case 'used':
      return { code: ErrorCode.SIGNUP_TOKEN_INVALID, message: 'this signup token was already used' };
    case 'expired':
      return { code: ErrorCode.SIGNUP_TOKEN_INVALID, message: 'this signup token has expired' };
    default:
      return assertNever(outcome);
  }
};

const assertNever = (value: never): never => {
  throw new Error(`unexpected signup token outcome ${String(value)}`);
};
