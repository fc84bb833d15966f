import {
  CloseCode,
  DeviceCertificateSchema,
  ErrorCode,
  PROTOCOL_VERSION,
  RecoverySealedSchema,
  RelayIdSchema,
  WireLimits,
  cryptoReady,
  encodeFrame,
  fromB64,
  openFromDevice,
  pairingProof,
  parsePairingCode,
  parseRelayFrame,
  toB64,
} from '@keel/engine';
import * as z from 'zod';
import { type DeviceGrant, type Identity, acceptDeviceGrant, createDeviceKeys } from './identity.js';
import type { WebSocketLike } from './transport/relay-link.js';

/** The sealed grant's content: everything a new device needs to act for the user. */
export const GrantPayloadSchema = z.strictObject({
  v: z.literal(1),
  rootKey: z.string().regex(/^[A-Za-z0-9_-]{43}$/),
  cert: DeviceCertificateSchema,
  chain: z.array(DeviceCertificateSchema).max(WireLimits.maxChain),
  epochs: z.record(z.string().regex(/^[1-9][0-9]*$/), z.string().regex(/^[A-Za-z0-9_-]{43}$/)),
  /** The relay id the issuing device is pinned to (absent from issuers before relay pinning). */
  relayId: RelayIdSchema.optional(),
  /** The user's recovery public key and root-key escrow (absent from issuers before recovery keys). */
  recoveryKey: z.string().regex(/^[A-Za-z0-9_-]{43}$/).optional(),
  escrow: RecoverySealedSchema.optional(),
});
export type GrantPayload = z.infer<typeof GrantPayloadSchema>;

export const encodeGrant = (grant: DeviceGrant & { epochs: Readonly<Record<string, string>> }): Uint8Array =>
  new TextEncoder().encode(
    JSON.stringify({
      v: 1,
      rootKey: toB64(grant.rootKey),
      cert: grant.cert,
      chain: [...grant.chain],
      epochs: { ...grant.epochs },
      ...(grant.relayId ? { relayId: grant.relayId } : {}),
      ...(grant.recoveryKey ? { recoveryKey: toB64(grant.recoveryKey) } : {}),
      ...(grant.escrow ? { escrow: grant.escrow } : {}),
    } satisfies GrantPayload),
  );

export class PairingError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

export interface JoinOptions {
  /** Relay WebSocket URL. */
  readonly url: string;
  /** The code the existing device shows (e.g. "keel-…"). */
  readonly code: string;
  /** WebSocket implementation; defaults to the global one. In Node pass `ws`. */
  readonly WebSocket?: new (url: string) => unknown;
  /** Give up after this long (default 2 minutes). */
  readonly timeoutMs?: number;
  /**
   * The relay deployment's id, when the app knows it: a grant from a device pinned to another
   * deployment is refused (RELAY_MISMATCH), and a grant without one gets this one.
   */
  readonly relayId?: string | undefined;
}

/**
 * On a new device: joins the user with a pairing code shown by one of their devices. This
 * device makes its own key pair; the existing device certifies it, registers it with the relay
 * and hands over the root key sealed to it. Resolves to the new device's identity (store it in
 * secure storage, then create a client with it); the identity carries the issuing device's
 * relay pin, so the new device's first connection already refuses any other deployment. Fails
 * with a PairingError if the code is unknown, expired, already used or refused.
 */
export const joinWithPairingCode = async (options: JoinOptions): Promise<Identity> => {
  await cryptoReady();
  const parsed = parsePairingCode(options.code);
  if (!parsed.ok) throw new PairingError(parsed.error.code, parsed.error.message);
  const expectedRelay = options.relayId === undefined ? undefined : RelayIdSchema.parse(options.relayId);
  const { id, secret } = parsed.value;
  const keys = await createDeviceKeys();
  const Impl = options.WebSocket ?? (globalThis as { WebSocket?: new (url: string) => unknown }).WebSocket;
  if (!Impl) throw new Error('no WebSocket implementation: pass one as options.WebSocket (in Node: the ws package)');
  const socket = new Impl(options.url) as WebSocketLike;
  return new Promise<Identity>((resolve, reject) => {
    let settled = false;
    const finish = (error: Error | undefined, identity?: Identity) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close(CloseCode.NORMAL, 'done');
      if (error) reject(error);
      else resolve(identity!);
    };
    const timer = setTimeout(() => finish(new PairingError(ErrorCode.PAIRING_EXPIRED, 'no grant arrived in time')), options.timeoutMs ?? 120_000);
    socket.onopen = () => {
      socket.send(encodeFrame({ type: 'pair-join', v: PROTOCOL_VERSION, id, deviceKey: toB64(keys.publicKey), proof: pairingProof(secret, id, keys.publicKey) }));
    };
    socket.onmessage = (event) => {
      const frame = parseRelayFrame(typeof event.data === 'string' ? event.data : '', 64 * 1024);
      if (!frame.ok) return;
      if (frame.value.type === 'error') {
        finish(new PairingError(frame.value.code, frame.value.message));
        return;
      }
      if (frame.value.type !== 'pair-grant' || frame.value.id !== id) return;
      const opened = openFromDevice(frame.value.sealed, frame.value.mac, keys, secret, id);
      if (!opened.ok) {
        finish(new PairingError(opened.error.code, opened.error.message));
        return;
      }
      let payload: GrantPayload;
      try {
        payload = GrantPayloadSchema.parse(JSON.parse(new TextDecoder().decode(opened.value)));
      } catch {
        finish(new PairingError(ErrorCode.BAD_PAYLOAD, 'the pairing grant is malformed'));
        return;
      }
      if (expectedRelay !== undefined && payload.relayId !== undefined && payload.relayId !== expectedRelay) {
        finish(new PairingError(ErrorCode.RELAY_MISMATCH, `the linking device is pinned to relay "${payload.relayId}", not "${expectedRelay}"`));
        return;
      }
      const relayId = payload.relayId ?? expectedRelay;
      const grant: DeviceGrant = {
        rootKey: fromB64(payload.rootKey),
        cert: payload.cert,
        chain: payload.chain,
        epochs: payload.epochs,
        ...(relayId ? { relayId } : {}),
        ...(payload.recoveryKey ? { recoveryKey: fromB64(payload.recoveryKey) } : {}),
        ...(payload.escrow ? { escrow: payload.escrow } : {}),
      };
      acceptDeviceGrant(grant, keys).then(
        (identity) => finish(undefined, identity),
        (error: unknown) => finish(error instanceof Error ? error : new Error(String(error))),
      );
    };
    socket.onclose = (event) => {
      finish(new PairingError(event.reason || ErrorCode.PAIRING_NOT_FOUND, `relay closed the pairing connection (${event.code})`));
    };
    socket.onerror = () => {};
  });
};
