import {
  type DeviceCertificate,
  DeviceCertificateSchema,
  type DeviceKeys,
  type RelayId,
  RelayIdSchema,
  RecoverySealedSchema,
  type UserKeys,
  WireLimits,
  certifyDevice,
  certifyFirstDevice,
  createRecoverySecret,
  cryptoReady,
  deriveRecoveryKeys,
  deriveUserKeys,
  deviceIdFromKey,
  fromB64,
  generateDeviceKeys,
  generateRootKey,
  sealRootKeyEscrow,
  toB64,
} from '@keel/engine';
import * as z from 'zod';

/** Everything one device needs to act for its user. Keep it in the platform's secure storage. */
export interface Identity {
  readonly user: UserKeys;
  readonly device: DeviceKeys;
  /** This device's certificate; presented to the relay on first contact. */
  readonly cert: DeviceCertificate;
  /** Certificates of the devices that certified this one, root first (empty for the first device). */
  readonly chain: readonly DeviceCertificate[];
  /** Key-epoch secrets after the first (base64url by epoch) handed over when this device was linked. */
  readonly epochs?: Readonly<Record<string, string>>;
  /**
   * The relay deployment the linking device was pinned to; a client with this identity pins it
   * before first contact. Absent for a first device (it pins on first contact).
   */
  readonly relayId?: RelayId;
  /**
   * The user's recovery PUBLIC key: verifies devices the recovery key enrolled, and every key
   * epoch this device publishes is sealed to it too. Absent for identities made before recovery
   * keys. The recovery secret (the 12 words) is never part of an identity.
   */
  readonly recoveryKey?: Uint8Array;
  /** The root key sealed to the recovery key (ciphertext): presented to the relay with the first device. */
  readonly escrow?: string;
}

/** What the person must write down: shown once, when the identity is created, and never stored. */
export interface RecoveryWords {
  /** 12 BIP39 English words. */
  readonly phrase: string;
  /** The same secret as `keel-recovery:…`, for a QR code. */
  readonly code: string;
}

/**
 * A new user's identity, plus the recovery words to show the person once. `recovery` is always
 * there on what `createIdentity` returns; it is optional in the type so a variable that held a
 * new identity can later hold any identity (a linked one, a parsed one).
 */
export type NewIdentity = Identity & { readonly recovery?: RecoveryWords };

/**
 * What an existing device hands a new device of the same user: the root key and the new
 * device's certificate. Step 4's pairing flow seals it to the new device's key; never send it
 * in clear.
 */
export interface DeviceGrant {
  readonly rootKey: Uint8Array;
  readonly cert: DeviceCertificate;
  readonly chain: readonly DeviceCertificate[];
  /** Key-epoch secrets after the first, so the new device reads what was written since revocations. */
  readonly epochs?: Readonly<Record<string, string>>;
  /** The relay id the issuing device is pinned to; the new device pins it too. */
  readonly relayId?: RelayId;
  /** The user's recovery public key, so the new device verifies recovery-enrolled devices. */
  readonly recoveryKey?: Uint8Array;
  /** The root-key escrow, so the new device can register the first device's chain itself. */
  readonly escrow?: string;
}

/**
 * A new user: a fresh root key, a recovery key, and this device's key pair, certified by the
 * user key together with the recovery public key. `recovery` holds the 12 words (and the QR
 * code) for the app to show the person ONCE: it is not enumerable, `serializeIdentity` never
 * writes it, and no other function keeps it. Whoever has the words can take the account over
 * from every device; whoever has lost them and a device to a thief cannot get it back.
 */
export const createIdentity = async (now: number = Date.now()): Promise<NewIdentity> => {
  await cryptoReady();
  const user = deriveUserKeys(generateRootKey());
  const device = generateDeviceKeys();
  const secret = createRecoverySecret();
  const recoveryKey = deriveRecoveryKeys(secret.entropy).publicKey;
  const identity: Identity = {
    user,
    device,
    cert: certifyFirstDevice(user, device, now, recoveryKey),
    chain: [],
    recoveryKey,
    escrow: sealRootKeyEscrow(user.userId, user.rootKey, recoveryKey),
  };
  const recovery: RecoveryWords = { phrase: secret.phrase, code: secret.code };
  return Object.defineProperty(identity, 'recovery', { value: recovery, enumerable: false }) as NewIdentity;
};

/** On the new device: its own key pair. Only the public key leaves the device. */
export const createDeviceKeys = async (): Promise<DeviceKeys> => {
  await cryptoReady();
  return generateDeviceKeys();
};

/** On an existing device: certify a new device's public key and hand over the root key. */
export const authorizeDevice = (existing: Identity, newDevicePublicKey: Uint8Array, now: number = Date.now()): DeviceGrant => ({
  rootKey: existing.user.rootKey,
  cert: certifyDevice(existing.user, existing.device, newDevicePublicKey, now),
  // Longer chains are cut at the root side: the relay knows old devices already.
  chain: [...existing.chain, existing.cert].slice(-WireLimits.maxChain),
  ...(existing.relayId ? { relayId: existing.relayId } : {}),
  ...(existing.recoveryKey ? { recoveryKey: existing.recoveryKey } : {}),
  ...(existing.escrow ? { escrow: existing.escrow } : {}),
});

/** On the new device: combine the grant with its own keys. Throws if the grant is for other keys. */
export const acceptDeviceGrant = async (grant: DeviceGrant, device: DeviceKeys): Promise<Identity> => {
  await cryptoReady();
  const user = deriveUserKeys(grant.rootKey);
  if (grant.cert.user !== user.userId) throw new Error('device grant: certificate is for another user');
  if (grant.cert.device !== device.deviceId || grant.cert.deviceKey !== toB64(device.publicKey)) {
    throw new Error('device grant: certificate is for another device key');
  }
  return {
    user,
    device,
    cert: grant.cert,
    chain: grant.chain,
    ...(grant.epochs ? { epochs: grant.epochs } : {}),
    ...(grant.relayId ? { relayId: grant.relayId } : {}),
    ...(grant.recoveryKey ? { recoveryKey: grant.recoveryKey } : {}),
    ...(grant.escrow ? { escrow: grant.escrow } : {}),
  };
};

/** Shortcut for tests and single-process demos: a second device of the same user. */
export const linkNewDevice = async (existing: Identity, now: number = Date.now()): Promise<Identity> => {
  const keys = await createDeviceKeys();
  return acceptDeviceGrant(authorizeDevice(existing, keys.publicKey, now), keys);
};

const b64 = (bytes: number) => z.string().regex(/^[A-Za-z0-9_-]+$/).refine((s) => fromB64(s).length === bytes, `must be ${bytes} bytes`);
const StoredIdentitySchema = z.strictObject({
  v: z.literal(1),
  rootKey: b64(32),
  deviceSecretKey: b64(64),
  cert: DeviceCertificateSchema,
  chain: z.array(DeviceCertificateSchema).max(WireLimits.maxChain),
  epochs: z.record(z.string().regex(/^[1-9][0-9]*$/), z.string().regex(/^[A-Za-z0-9_-]{43}$/)).optional(),
  /** Absent in identities stored before relay pinning, and for first devices. */
  relayId: RelayIdSchema.optional(),
  /** Absent in identities stored before recovery keys. */
  recoveryKey: b64(32).optional(),
  escrow: RecoverySealedSchema.optional(),
});

/**
 * Serialises an identity (secret keys included) for the app's secure storage. The recovery
 * words of a new identity are never written: only the recovery public key and the escrow.
 */
export const serializeIdentity = (identity: Identity): string =>
  JSON.stringify({
    v: 1,
    rootKey: toB64(identity.user.rootKey),
    deviceSecretKey: toB64(identity.device.secretKey),
    cert: identity.cert,
    chain: identity.chain,
    ...(identity.epochs ? { epochs: identity.epochs } : {}),
    ...(identity.relayId ? { relayId: identity.relayId } : {}),
    ...(identity.recoveryKey ? { recoveryKey: toB64(identity.recoveryKey) } : {}),
    ...(identity.escrow ? { escrow: identity.escrow } : {}),
  });

/** Parses what `serializeIdentity` wrote; throws a clear error on anything else. */
export const parseIdentity = async (text: string): Promise<Identity> => {
  await cryptoReady();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error('stored identity is not JSON');
  }
  const parsed = StoredIdentitySchema.safeParse(json);
  if (!parsed.success) throw new Error(`stored identity is invalid: ${parsed.error.issues[0]?.message ?? 'unknown'}`);
  const user = deriveUserKeys(fromB64(parsed.data.rootKey));
  const secretKey = fromB64(parsed.data.deviceSecretKey);
  // An Ed25519 secret key in libsodium's layout ends with its public key.
  const publicKey = secretKey.slice(32);
  const device: DeviceKeys = { deviceId: deviceIdFromKey(publicKey), publicKey, secretKey };
  const cert = parsed.data.cert;
  if (cert.user !== user.userId || cert.device !== device.deviceId) throw new Error('stored identity: certificate does not match keys');
  return {
    user,
    device,
    cert,
    chain: parsed.data.chain,
    ...(parsed.data.epochs ? { epochs: parsed.data.epochs } : {}),
    ...(parsed.data.relayId ? { relayId: parsed.data.relayId } : {}),
    ...(parsed.data.recoveryKey ? { recoveryKey: fromB64(parsed.data.recoveryKey) } : {}),
    ...(parsed.data.escrow ? { escrow: parsed.data.escrow } : {}),
  };
};
