import {
  CloseCode,
  type ClientFrame,
  type DeviceId,
  type DeviceKeys,
  type EpochRecord,
  ErrorCode,
  PROTOCOL_VERSION,
  type RecoveryKeys,
  type RelayFrame,
  type RelayId,
  RelayIdSchema,
  type UserId,
  bytesEqual,
  certifyByRecovery,
  createEpochRecord,
  cryptoReady,
  deriveRecoveryKeys,
  deriveUserKeys,
  encodeFrame,
  fromB64,
  generateDeviceKeys,
  generateEpochSecret,
  openEpochRecord,
  openEpochRecoveryWrap,
  openRootKeyEscrow,
  parseRecoveryPhrase,
  parseRelayFrame,
  signChallenge,
  signRecoveryReset,
  toB64,
  userIdFromKey,
  verifyCertificateChain,
  verifyEpochRecord,
} from '@keel/engine';
import type { Identity } from './identity.js';
import type { WebSocketLike } from './transport/relay-link.js';

/** A recovery that did not happen, with a stable code (`RECOVERY_*`, `RELAY_MISMATCH`, `AUTH_FAILED`…). */
export class RecoveryError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

interface CommonOptions {
  /** Relay WebSocket URL. */
  readonly url: string;
  /** The 12 words (any case and spacing) or the `keel-recovery:` code. */
  readonly phrase: string;
  /** WebSocket implementation; defaults to the global one. In Node pass `ws`. */
  readonly WebSocket?: (new (url: string) => unknown) | undefined;
  /** Other devices of the user to keep (or reinstate): every device not kept is revoked. */
  readonly keep?: readonly DeviceId[];
  /** Give up after this long (default 30 s). */
  readonly timeoutMs?: number;
}

export interface RecoverDeviceOptions extends CommonOptions {
  /** The relay deployment's id, when the app knows it: no other deployment's challenge is answered. */
  readonly relayId?: string | undefined;
}

export interface RecoverThisDeviceOptions extends CommonOptions {
  /** This device's identity; a thief may have revoked it. */
  readonly identity: Identity;
}

const MAX_INBOUND_CHARS = 8 * 1024 * 1024;

/** One short-lived socket, read frame by frame; every wait is bounded by the session's deadline. */
interface Session {
  send(frame: ClientFrame): void;
  next<K extends RelayFrame['type']>(type: K): Promise<Extract<RelayFrame, { type: K }>>;
}

/** Runs `script` over a fresh socket and closes it after, whatever happened. */
const withSocket = async <T>(options: CommonOptions, script: (session: Session) => Promise<T>): Promise<T> => {
  const Impl = options.WebSocket ?? (globalThis as { WebSocket?: new (url: string) => unknown }).WebSocket;
  if (!Impl) throw new Error('no WebSocket implementation: pass one as options.WebSocket (in Node: the ws package)');
  const socket = new Impl(options.url) as WebSocketLike;
  const inbox: RelayFrame[] = [];
  let wake: (() => void) | undefined;
  let failure: RecoveryError | undefined;
  const fail = (error: RecoveryError) => {
    failure ??= error;
    wake?.();
  };
  const timer = setTimeout(() => fail(new RecoveryError(ErrorCode.AUTH_TIMEOUT, 'the relay did not finish the recovery in time')), options.timeoutMs ?? 30_000);
  const opened = new Promise<void>((resolve) => {
    socket.onopen = () => resolve();
    wake = resolve;
  });
  socket.onmessage = (event) => {
    const parsed = parseRelayFrame(typeof event.data === 'string' ? event.data : '', MAX_INBOUND_CHARS);
    if (!parsed.ok) return fail(new RecoveryError(parsed.error.code, `the relay sent a bad frame: ${parsed.error.message}`));
    if (parsed.value.type === 'error') return fail(new RecoveryError(parsed.value.code, parsed.value.message));
    inbox.push(parsed.value);
    wake?.();
  };
  socket.onclose = (event) => fail(new RecoveryError(event.reason || ErrorCode.AUTH_FAILED, `the relay closed the connection (${event.code})`));
  socket.onerror = () => {};
  const session: Session = {
    send: (frame) => socket.send(encodeFrame(frame)),
    next: async <K extends RelayFrame['type']>(type: K) => {
      // Bounded: each pass either takes a frame, or waits for one, a close, or the deadline.
      for (;;) {
        const index = inbox.findIndex((f) => f.type === type);
        if (index >= 0) return inbox.splice(index, 1)[0] as Extract<RelayFrame, { type: K }>;
        if (failure) throw failure;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
  };
  try {
    await opened;
    if (failure) throw failure;
    return await script(session);
  } finally {
    clearTimeout(timer);
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    socket.close(CloseCode.NORMAL, 'done');
  }
};

/** Asks the relay which user the recovery key belongs to, and the user's last reset generation. */
const findUser = (options: CommonOptions, recovery: RecoveryKeys) =>
  withSocket(options, async (session) => {
    session.send({ type: 'recovery-find', v: PROTOCOL_VERSION, recoveryKey: toB64(recovery.publicKey) });
    const found = await session.next('recovery-found');
    // The user id is the hash of the user key: the relay cannot name a user it does not hold the key of.
    if (userIdFromKey(fromB64(found.userKey)) !== found.user) throw new RecoveryError(ErrorCode.BAD_PAYLOAD, 'the relay named a user that is not its key');
    return found;
  });

const parseWords = (phrase: string): RecoveryKeys => {
  const parsed = parseRecoveryPhrase(phrase);
  if (!parsed.ok) throw new RecoveryError(parsed.error.code, parsed.error.message);
  return deriveRecoveryKeys(parsed.value.entropy);
};

interface Recovered {
  readonly relay: RelayId;
  readonly ready: Extract<RelayFrame, { type: 'ready' }>;
  /** Epoch secrets opened (sealed to this device or to the recovery key), base64url by epoch. */
  readonly epochs: Record<string, string>;
}

/**
 * hello with the reset → challenge → auth → ready; then the epoch secrets this device can open,
 * and a new key epoch sealed to the devices that stay (and to the recovery key), published and
 * confirmed, so no revoked device reads what is written from now on.
 */
const runReset = (
  options: CommonOptions,
  hello: Extract<ClientFrame, { type: 'hello' }>,
  device: DeviceKeys,
  recovery: RecoveryKeys,
  pinned: RelayId | undefined,
): Promise<Recovered> =>
  withSocket(options, async (session) => {
    const user = hello.user;
    session.send(hello);
    const challenge = await session.next('challenge');
    if (pinned !== undefined && challenge.relay !== pinned) {
      throw new RecoveryError(ErrorCode.RELAY_MISMATCH, `the relay presented id "${challenge.relay}", but this device is pinned to "${pinned}"`);
    }
    session.send({ type: 'auth', sig: signChallenge(challenge.relay, challenge.nonce, user, device.deviceId, device.secretKey) });
    const ready = await session.next('ready');

    // Revoked devices' certificates too: an epoch they issued before their revocation still counts.
    const known = verifyCertificateChain([...ready.certs, ...(ready.revokedCerts ?? [])], user, recovery.publicKey);
    known.set(device.deviceId, device.publicKey);
    const epochs: Record<string, string> = {};
    let last = 0;
    for (const record of ready.epochs ?? []) {
      last = Math.max(last, record.epoch);
      const issuerKey = known.get(record.issuer);
      if (!issuerKey || record.user !== user || !verifyEpochRecord(record, issuerKey)) continue;
      const mine = openEpochRecord(record, device);
      const opened = mine.ok ? mine : record.recovery ? openEpochRecoveryWrap(record.recovery, user, record.epoch, recovery) : mine;
      if (opened.ok) epochs[String(record.epoch)] = toB64(opened.value);
    }

    // The new epoch: the devices the reset keeps (that this device can verify), and itself —
    // never what the relay calls live, so a relay cannot slip a thief in among the recipients.
    const kept = new Set<DeviceId>(hello.recovery?.keep ?? []);
    const recipients = new Map([...known].filter(([id]) => kept.has(id) || id === device.deviceId));
    const epoch = last + 1;
    const secret = generateEpochSecret();
    const record: EpochRecord = createEpochRecord(user, epoch, device, secret, recipients, Date.now(), recovery.publicKey);
    session.send({ type: 'epoch', record });
    // The relay echoes a stored epoch to every connection of the user, this one included.
    for (;;) {
      const echoed = await session.next('epoch');
      if (echoed.record.epoch === epoch && echoed.record.issuer === device.deviceId) break;
    }
    epochs[String(epoch)] = toB64(secret);
    return { relay: challenge.relay, ready, epochs };
  });

/**
 * On a new device, from nothing but the 12 words: enrols this device with a certificate of the
 * recovery key and, in the same handshake, a reset that revokes every other device of the user
 * but `keep`. Opens the root key the relay kept sealed to the recovery key and the epoch secrets
 * sealed to it, publishes a new key epoch that the revoked devices lack, and resolves to a full
 * identity (store it with `serializeIdentity`, then `createClient`). A thief holding a stolen
 * device is cut off (4003) and refused from then on.
 */
export const recoverDevice = async (options: RecoverDeviceOptions): Promise<Identity> => {
  await cryptoReady();
  const recovery = parseWords(options.phrase);
  const pinned = options.relayId === undefined ? undefined : RelayIdSchema.parse(options.relayId);
  const found = await findUser(options, recovery);
  // The root key first: without it a reset would leave the owner a device that reads nothing.
  if (!found.escrow) {
    throw new RecoveryError(ErrorCode.RECOVERY_UNKNOWN, 'the relay keeps no root key sealed to this recovery key; recover from a device you still have (recoverThisDevice)');
  }
  const opened = openRootKeyEscrow(found.escrow, found.user, recovery);
  if (!opened.ok) throw new RecoveryError(opened.error.code, `the root-key escrow does not open: ${opened.error.message}`);
  // The root key must be this user's: the user id is the hash of the key it derives.
  const user = deriveUserKeys(opened.value);
  if (user.userId !== found.user) throw new RecoveryError(ErrorCode.BAD_PAYLOAD, "the escrow holds another user's root key");
  const device = generateDeviceKeys();
  const now = Date.now();
  const cert = certifyByRecovery(user, recovery, device.publicKey, now);
  const keep = [device.deviceId, ...(options.keep ?? []).filter((id) => id !== device.deviceId)];
  const reset = signRecoveryReset(found.user, keep, found.gen + 1, recovery, now);
  const done = await runReset(
    options,
    { type: 'hello', v: PROTOCOL_VERSION, user: found.user, device: device.deviceId, cert, recovery: reset },
    device,
    recovery,
    pinned,
  );
  return {
    user,
    device,
    cert,
    chain: [],
    epochs: done.epochs,
    relayId: done.relay,
    recoveryKey: recovery.publicKey,
  };
};

/**
 * On a device that still exists but was revoked (by a thief holding another device): with the
 * 12 words, reinstates this device (and `keep`), revokes every other device of the user and
 * publishes a new key epoch sealed to the kept devices. Resolves to this device's identity with
 * the new epoch secrets added; create a client with it (the same storage) to go on.
 */
export const recoverThisDevice = async (options: RecoverThisDeviceOptions): Promise<Identity> => {
  await cryptoReady();
  const { identity } = options;
  const recovery = parseWords(options.phrase);
  if (identity.recoveryKey && !bytesEqual(identity.recoveryKey, recovery.publicKey)) {
    throw new RecoveryError(ErrorCode.RECOVERY_UNKNOWN, "these words are not this user's recovery phrase");
  }
  const found = await findUser(options, recovery);
  const user: UserId = identity.user.userId;
  if (found.user !== user) throw new RecoveryError(ErrorCode.RECOVERY_UNKNOWN, "these words are not this user's recovery phrase");
  const keep = [identity.device.deviceId, ...(options.keep ?? []).filter((id) => id !== identity.device.deviceId)];
  const reset = signRecoveryReset(user, keep, found.gen + 1, recovery, Date.now());
  const done = await runReset(
    options,
    { type: 'hello', v: PROTOCOL_VERSION, user, device: identity.device.deviceId, cert: identity.cert, recovery: reset },
    identity.device,
    recovery,
    identity.relayId,
  );
  return {
    ...identity,
    epochs: { ...identity.epochs, ...done.epochs },
    relayId: identity.relayId ?? done.relay,
    recoveryKey: recovery.publicKey,
  };
};
