import { formatTime, h } from './dom.js';
import type { DemoClient } from './keel-api.js';

/** Crisis mode and grace-period banners; they follow the client's events on every device. */
export const renderBanners = (client: DemoClient): HTMLElement => {
  const crisis = h(
    'div',
    { class: 'banner crisis', role: 'alert', hidden: true, 'data-testid': 'crisis-banner' },
    h('strong', {}, 'Crisis support is on for all your devices. '),
    'You can call or text ',
    h('a', { href: 'tel:988' }, '988'),
    ' any time, or reach the people in your safety plan. ',
    h('button', { type: 'button', onclick: () => void client.setCrisisMode(false, 'user') }, 'I am safe now — turn off'),
  );
  const grace = h('div', { class: 'banner grace', role: 'status', hidden: true, 'data-testid': 'grace-banner' });
  const plan = h('p', { class: 'plan-note', 'data-testid': 'plan-note' });
  const renderCrisis = (active: boolean) => {
    crisis.hidden = !active;
    document.body.dataset.crisis = String(active);
  };
  const renderTier = () => {
    const t = client.tier;
    grace.hidden = t.name !== 'grace_period';
    grace.textContent =
      t.name === 'grace_period'
        ? `Your last payment did not go through. Everything keeps working${t.graceEndsAt ? ` until ${formatTime(t.graceEndsAt)}` : ' for now'}; after that your plan returns to trial. Nothing is deleted.`
        : '';
    if (t.graceEndsAt) grace.dataset.endsAt = String(t.graceEndsAt);
    plan.textContent = {
      trial: 'You are on the trial plan: crisis data syncs at once to all devices; other data is backed up every 30 s and stays on this device. The dev relay’s buttons below switch plans.',
      basic: 'You are on the basic plan: everything syncs across your devices within seconds.',
      grace_period: 'Your plan is in a grace period: everything keeps syncing.',
      premium: 'You are on the premium plan: everything syncs across your devices in real time.',
    }[t.name];
  };
  client.on('crisis', renderCrisis);
  client.on('tier', renderTier);
  renderCrisis(client.crisisMode);
  renderTier();
  const needHelp = h('button', { type: 'button', class: 'danger', 'data-testid': 'crisis-on', onclick: () => void client.setCrisisMode(true, 'user') }, 'I need support now');
  return h('div', { class: 'banners' }, crisis, grace, plan, needHelp);
};
