import { type Identity, type KeelClient, createMemoryStore, type ClientStore, type ClientError } from '@keel/client';
import { createNodeClient } from '@keel/client/node';

export interface Device {
  readonly client: KeelClient;
  readonly store: ClientStore;
  readonly errors: ClientError[];
}

/** A client on a fresh (or given) store, recording every error it reports. */
export const connectDevice = async (
  url: string,
  identity: Identity,
  store: ClientStore = createMemoryStore(),
  options: { readonly snapshotEvery?: number; readonly relayId?: string; readonly crisisAuthorityKeys?: readonly string[]; readonly liveness?: { intervalMs?: number; timeoutMs?: number } } = {},
): Promise<Device> => {
  const client = await createNodeClient({ url, identity, storage: store, backoff: { baseMs: 50, maxMs: 500 }, ...options });
  const errors: ClientError[] = [];
  client.on('error', (e) => errors.push(e));
  return { client, store, errors };
};

/** Polls `predicate` until true; fails after `timeoutMs`. Bounded in time and count. */
export const waitFor = async (predicate: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

/**
 * Resolves with the code of the final error that cuts `device` off. A 4003 close is final only
 * when the device holds a verified revocation of itself (the relay sends it before closing), so
 * a device that is really revoked ends here and a forged close never does. Bounded.
 */
export const cutOff = (device: Device, timeoutMs = 10_000): Promise<string> => {
  const seen = device.errors.find((e) => e.final === true);
  if (seen) return Promise.resolve(seen.code);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      device.client.off('error', onError);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for the relay to cut the device off`));
    }, timeoutMs);
    const onError = (e: { code: string; final?: boolean }) => {
      if (e.final !== true) return;
      clearTimeout(timer);
      device.client.off('error', onError);
      resolve(e.code);
    };
    device.client.on('error', onError);
  });
};
