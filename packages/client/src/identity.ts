import {
  type DeviceCertificate,
  DeviceCertificateSchema,
  type DeviceKeys,
  type RelayId,
  RelayIdSchema,
  type UserKeys,
  WireLimits,
  certifyDevice,
  certifyFirstDevice,
  cryptoReady,
  deriveUserKeys,
  deviceIdFromKey,
  fromB64,
  generateDeviceKeys,
  generateRootKey,
  toB64,
} from '@keel/engine';
import { z } from 'zod';

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
}

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
}

/** A new user: a fresh root key and this device's key pair, certified by the user key. */
export const createIdentity = async (now: number = Date.now()): Promise<Identity> => {
  await cryptoReady();
  const user = deriveUserKeys(generateRootKey());
  const device = generateDeviceKeys();
  return { user, device, cert: certifyFirstDevice(user, device, now), chain: [] };
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
});

/** Serialises an identity (secret keys included) for the app's secure storage. */
export const serializeIdentity = (identity: Identity): string =>
  JSON.stringify({
    v: 1,
    rootKey: toB64(identity.user.rootKey),
    deviceSecretKey: toB64(identity.device.secretKey),
    cert: identity.cert,
    chain: identity.chain,
    ...(identity.epochs ? { epochs: identity.epochs } : {}),
    ...(identity.relayId ? { relayId: identity.relayId } : {}),
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
  };
};
