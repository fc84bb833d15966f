import { randomBytes } from 'node:crypto';
import { createIdentity, linkNewDevice } from '@keel/client';
import Stripe from 'stripe';
import type * as Y from 'yjs';
import { type Device, waitFor } from './devices.js';
import { openRawSocket } from './raw-device.js';
import type { RelayProcess } from './relay-process.js';
import type { TestScope } from './scope.js';

/*
 * One scripted run against a real relay process, shared by the metrics and PII tests: two users
 * with two real client devices each, crisis edits (safety plan) and bulk edits (mood journal)
 * synced between each user's devices, one frame the relay refuses, and one signed payment
 * webhook that changes a user's tier. Every name and text the run writes carries `marker`.
 */

/** Only the SDK's local signing helper is used; no request leaves the machine. */
const stripe = new Stripe('sk_test_keel_offline_never_used');

/** What a relay must be started with for the run's webhook. */
export const scriptedRunEnv = (secret: string): Record<string, string> => ({
  KEEL_RELAY_WEBHOOK_SECRET: secret,
  KEEL_RELAY_PRICE_TIERS: JSON.stringify({ price_basic: 'basic', price_premium: 'premium' }),
});

export const newWebhookSecret = (): string => `whsec_${randomBytes(24).toString('hex')}`;

export interface ScriptedRun {
  /** Every device, connected and synced: two per user. */
  readonly devices: readonly Device[];
  /** Crisis-lane edits the first device of each user made (each flushed on its own). */
  readonly crisisEdits: number;
  /** The outcome the relay answered the webhook with. */
  readonly webhookOutcome: string;
}

const CRISIS_EDITS = 5;

const textOf = (doc: Y.Doc, name: string) => doc.getText(name).toString();

/** Runs the script; `marker` is planted in document names, contents and the webhook's personal data. */
export const runScript = async (scope: TestScope, relay: RelayProcess, secret: string, marker: string): Promise<ScriptedRun> => {
  const users = [await createIdentity(), await createIdentity()];
  const devices: Device[] = [];
  for (const identity of users) {
    const first = await scope.device(relay.url, identity);
    const second = await scope.device(relay.url, await linkNewDevice(identity));
    devices.push(first, second);
    const plan = { class: 'safety_plan', name: `plan ${marker}` } as const;
    const journal = { class: 'mood', name: `journal ${marker}` } as const;
    const [planA, planB] = [await first.client.open(plan), await second.client.open(plan)];
    const [journalA, journalB] = [await first.client.open(journal), await second.client.open(journal)];
    for (let i = 0; i < CRISIS_EDITS; i++) {
      planA.getText('reasons').insert(0, `${marker} reason ${i}\n`);
      await first.client.flush();
    }
    journalA.getText('entry').insert(0, `${marker} felt better today`);
    journalA.getMap('meta').set(`${marker}-key`, `${marker}-value`);
    await first.client.flush();
    await waitFor(() => textOf(planB, 'reasons').split('\n').filter(Boolean).length === CRISIS_EDITS, 10_000, 'crisis edits on the second device');
    await waitFor(() => textOf(journalB, 'entry').includes(marker), 10_000, 'bulk edit on the second device');
  }

  // A frame before authentication: answered NOT_AUTHENTICATED, never acted on.
  const raw = await openRawSocket(relay.url);
  raw.sendFrame({ type: 'push', envs: [] });
  await raw.nextOf('error', 5_000);
  await raw.close();

  // A signed subscription event moving the first user to basic, with personal data a real one carries.
  const user = users[0]!.user.userId;
  const event = {
    id: `evt_1Keel${randomBytes(6).toString('hex')}`,
    object: 'event',
    api_version: '2025-03-31.basil',
    created: Math.floor(Date.now() / 1000),
    livemode: false,
    type: 'customer.subscription.updated',
    data: {
      object: {
        id: 'sub_1KeelScripted',
        object: 'subscription',
        customer: 'cus_KeelScripted',
        status: 'active',
        metadata: { keel_user: user, note: `contact ${marker}@example.com` },
        items: { object: 'list', data: [{ id: 'si_1', object: 'subscription_item', price: { id: 'price_basic', object: 'price' }, quantity: 1 }] },
        customer_email: `${marker}@example.com`,
        customer_name: `Sam ${marker}`,
      },
      previous_attributes: {},
    },
  };
  const payload = JSON.stringify(event);
  const response = await fetch(`${relay.httpUrl}/webhooks/payments`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': stripe.webhooks.generateTestHeaderString({ payload, secret }) },
    body: payload,
    signal: AbortSignal.timeout(5_000),
  });
  const body = (await response.json()) as { outcome?: string };
  if (response.status !== 200 || typeof body.outcome !== 'string') throw new Error(`webhook answered ${response.status} ${JSON.stringify(body)}`);
  await waitFor(() => devices[0]!.client.tier.name === 'basic' && devices[1]!.client.tier.name === 'basic', 5_000, 'the tier change on both devices');
  return { devices, crisisEdits: CRISIS_EDITS, webhookOutcome: body.outcome };
};
