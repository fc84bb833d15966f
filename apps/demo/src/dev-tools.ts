import { h, section } from './dom.js';
import type { DemoClient } from './keel-api.js';

const EVENTS = [
  ['upgrade', 'Upgrade to premium'],
  ['payment_failed', 'Payment failed'],
  ['recovered', 'Payment recovered'],
  ['expired', 'Subscription expired'],
] as const;

/**
 * Dev mode only: buttons that make the dev server post a real, signed Stripe-shaped webhook to the
 * local relay for this user. The signing secret stays in the dev server; the page names the event.
 */
export const renderDevTools = (client: DemoClient): HTMLElement => {
  const result = h('p', { class: 'hint', role: 'status', 'data-testid': 'webhook-result' });
  const buttons = EVENTS.map(([event, label]) =>
    h(
      'button',
      {
        type: 'button',
        'data-testid': `webhook-${event}`,
        onclick: async () => {
          result.textContent = `Sending “${label}”…`;
          try {
            const response = await fetch('/dev/webhook', {
              method: 'POST',
              headers: { 'content-type': 'application/json' },
              body: JSON.stringify({ event, user: client.identity.user.userId }),
            });
            const body = (await response.json()) as { outcome?: string; error?: string };
            result.textContent = `${label}: relay answered ${response.status} ${body.outcome ?? body.error ?? ''}`;
            result.dataset.outcome = body.outcome ?? body.error ?? String(response.status);
          } catch (error) {
            result.textContent = `${label}: ${error instanceof Error ? error.message : String(error)}`;
          }
        },
      },
      label,
    ),
  );
  return section(
    'dev',
    'Dev relay: payment events',
    h('p', { class: 'hint' }, 'These post real signed test webhooks to your local relay, so you can watch the plan change on every device.'),
    h('div', { class: 'inline-form' }, ...buttons),
    result,
  );
};
