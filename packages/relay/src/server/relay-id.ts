import { randomBytes } from 'node:crypto';
import { type RelayId, RelayIdSchema } from '@keel/engine';
import type { Logger } from '../log.js';
import type { RelayStore } from '../storage/relay-store.js';

/** A fresh deployment id: 128 random bits, so no two deployments share one by accident. */
export const generateRelayId = (): RelayId => RelayIdSchema.parse(`keel-${randomBytes(16).toString('base64url')}`);

/**
 * The id this relay presents in its challenges. A configured id is the operator's explicit
 * choice and wins; otherwise the store's, generated and kept at the first start. A configured
 * id that differs from the kept one is used with a warning: devices that pinned the kept id
 * refuse this relay from now on. The kept id itself never changes.
 */
export const resolveRelayId = async (configured: RelayId | undefined, store: RelayStore, log: Logger): Promise<RelayId> => {
  const kept = RelayIdSchema.safeParse(await store.relayId(configured ?? generateRelayId()));
  if (!kept.success) throw new Error(`the store's relay id is invalid: ${kept.error.issues[0]?.message ?? 'unknown'}`);
  if (configured === undefined || configured === kept.data) return kept.data;
  log.log('warn', 'configured relay id differs from the one this database was first served with; devices that pinned that one will refuse this relay', {
    relay: configured,
    stored: kept.data,
  });
  return configured;
};
