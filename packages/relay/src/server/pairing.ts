import { ErrorCode, type KeelError, type Result, type UserId, err, ok } from '@keel/engine';

/** One offered pairing code, as the relay sees it: an id, an owner, a deadline. */
export interface PairingSession<C> {
  readonly id: string;
  readonly user: UserId;
  readonly issuer: C;
  readonly expiresAt: number;
  /** The connection that joined with the code; set once, so a code works once. */
  joiner: C | undefined;
}

/**
 * Pairing sessions in flight. They live minutes and are tied to two live sockets, so they are
 * kept in memory: a relay restart ends them, and the devices simply start again.
 */
export const createPairingRegistry = <C>(now: () => number) => {
  const sessions = new Map<string, PairingSession<C>>();
  const expired = (s: PairingSession<C>) => s.expiresAt <= now();

  return {
    open(id: string, user: UserId, issuer: C, ttlMs: number): Result<PairingSession<C>> {
      const existing = sessions.get(id);
      if (existing && !expired(existing)) return err(ErrorCode.PAIRING_USED, 'this pairing id is already open');
      const session: PairingSession<C> = { id, user, issuer, expiresAt: now() + ttlMs, joiner: undefined };
      sessions.set(id, session);
      return ok(session);
    },

    /** A new device presents the code's id. Used or expired codes fail, and stay failed. */
    join(id: string, joiner: C): Result<PairingSession<C>> {
      const session = sessions.get(id);
      if (!session) return err(ErrorCode.PAIRING_NOT_FOUND, 'no such pairing code (it may have been used or cancelled)');
      if (expired(session)) {
        sessions.delete(id);
        return err(ErrorCode.PAIRING_EXPIRED, 'this pairing code has expired');
      }
      if (session.joiner !== undefined) return err(ErrorCode.PAIRING_USED, 'this pairing code was already used');
      session.joiner = joiner;
      return ok(session);
    },

    /** Ends a session: the issuer granted or refused, or one side went away. */
    take(id: string, issuer: C): Result<PairingSession<C>> {
      const session = sessions.get(id);
      if (!session || session.issuer !== issuer) return err(ErrorCode.PAIRING_NOT_FOUND, 'no such pairing session of this device');
      sessions.delete(id);
      return ok(session);
    },

    /** Sessions a closing connection took part in, removed. */
    dropAll(conn: C): PairingSession<C>[] {
      const dropped: PairingSession<C>[] = [];
      for (const [id, session] of sessions) {
        if (session.issuer === conn || session.joiner === conn) {
          sessions.delete(id);
          dropped.push(session);
        }
      }
      return dropped;
    },
  };
};
export type PairingRegistry<C> = ReturnType<typeof createPairingRegistry<C>>;
export type PairingError = KeelError;
