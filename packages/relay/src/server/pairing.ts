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
 * kept in memory: a relay restart ends them, and the devices simply start again. Each
 * connection may hold a few open codes (`maxPerIssuer`), and sessions are indexed by the
 * connections taking part, so closing one costs its own sessions, not a scan of everyone's.
 */
export const createPairingRegistry = <C>(now: () => number) => {
  const sessions = new Map<string, PairingSession<C>>();
  const byConnection = new Map<C, Set<string>>();
  const expired = (s: PairingSession<C>) => s.expiresAt <= now();

  const index = (conn: C, id: string): void => {
    let ids = byConnection.get(conn);
    if (!ids) byConnection.set(conn, (ids = new Set()));
    ids.add(id);
  };
  const unindex = (conn: C | undefined, id: string): void => {
    if (conn === undefined) return;
    const ids = byConnection.get(conn);
    ids?.delete(id);
    if (ids?.size === 0) byConnection.delete(conn);
  };
  const remove = (session: PairingSession<C>): void => {
    sessions.delete(session.id);
    unindex(session.issuer, session.id);
    unindex(session.joiner, session.id);
  };

  return {
    open(id: string, user: UserId, issuer: C, ttlMs: number, maxPerIssuer: number): Result<PairingSession<C>> {
      const existing = sessions.get(id);
      if (existing && !expired(existing)) return err(ErrorCode.PAIRING_USED, 'this pairing id is already open');
      if (existing) remove(existing);
      // Expired codes of this connection make room before the cap is checked.
      for (const open of byConnection.get(issuer) ?? []) {
        const session = sessions.get(open);
        if (session && session.issuer === issuer && expired(session) && session.joiner === undefined) remove(session);
      }
      const mine = [...(byConnection.get(issuer) ?? [])].filter((open) => sessions.get(open)?.issuer === issuer).length;
      if (mine >= maxPerIssuer) return err(ErrorCode.LIMIT_EXCEEDED, `a device may offer at most ${maxPerIssuer} pairing codes at once`);
      const session: PairingSession<C> = { id, user, issuer, expiresAt: now() + ttlMs, joiner: undefined };
      sessions.set(id, session);
      index(issuer, id);
      return ok(session);
    },

    /** A new device presents the code's id. Used or expired codes fail, and stay failed. */
    join(id: string, joiner: C): Result<PairingSession<C>> {
      const session = sessions.get(id);
      if (!session) return err(ErrorCode.PAIRING_NOT_FOUND, 'no such pairing code (it may have been used or cancelled)');
      if (expired(session)) {
        remove(session);
        return err(ErrorCode.PAIRING_EXPIRED, 'this pairing code has expired');
      }
      if (session.joiner !== undefined) return err(ErrorCode.PAIRING_USED, 'this pairing code was already used');
      session.joiner = joiner;
      index(joiner, id);
      return ok(session);
    },

    /** Ends a session: the issuer granted or refused, or one side went away. */
    take(id: string, issuer: C): Result<PairingSession<C>> {
      const session = sessions.get(id);
      if (!session || session.issuer !== issuer) return err(ErrorCode.PAIRING_NOT_FOUND, 'no such pairing session of this device');
      remove(session);
      return ok(session);
    },

    /** Sessions a closing connection took part in, removed. */
    dropAll(conn: C): PairingSession<C>[] {
      const dropped: PairingSession<C>[] = [];
      for (const id of byConnection.get(conn) ?? []) {
        const session = sessions.get(id);
        if (!session) continue;
        remove(session);
        dropped.push(session);
      }
      byConnection.delete(conn);
      return dropped;
    },

    /** Open sessions (for tests and metrics). */
    get size(): number {
      return sessions.size;
    },
  };
};
export type PairingRegistry<C> = ReturnType<typeof createPairingRegistry<C>>;
export type PairingError = KeelError;
