import { renderSVG } from 'uqr';
import { formatTime, h, replace, section } from './dom.js';
import type { DemoClient } from './keel-api.js';

const short = (id: string) => id.slice(0, 8);

/**
 * This device, the user's linked devices, the tier (with the grace period's end), sync status,
 * outbox depth and last sync latency per class (contract 4), and pairing by code and QR.
 */
export const renderDevices = (client: DemoClient, onSignOut: () => Promise<void>): HTMLElement => {
  const self = client.identity.device.deviceId;
  const status = h('dd', { 'data-testid': 'sync-status' });
  const contact = h('dd', { 'data-testid': 'last-contact' });
  const tier = h('dd', { 'data-testid': 'tier' });
  const outbox = h('dd', { 'data-testid': 'outbox-depth' });
  const latency = h('dd', { 'data-testid': 'latency' });
  const devices = h('ul', { 'data-testid': 'device-list' });
  const saved = h('p', { class: 'hint', role: 'status', 'data-testid': 'sync-now-result' });
  const problems = h('ul', { 'data-testid': 'sync-errors' });
  const problemsBox = h('details', { hidden: true }, h('summary', {}, 'Sync problems on this device'), problems);
  client.on('error', (error) => {
    problemsBox.hidden = false;
    problems.append(h('li', { 'data-code': error.code }, `${new Date().toLocaleTimeString()} ${error.code}: ${error.message}`));
    // The newest 20 are enough to tell what is going on.
    while (problems.children.length > 20) problems.firstElementChild?.remove();
  });

  const renderStatus = () => {
    status.textContent = `${client.status}${client.unconfirmed ? ` · ${client.unconfirmed} change(s) not yet confirmed` : ''}`;
    status.dataset.status = client.status;
    const last = client.lastContactAt;
    contact.textContent = last === undefined ? 'never' : `${Math.max(0, Math.round((Date.now() - last) / 1000))} s ago`;
    const stats = client.stats();
    outbox.textContent = String(stats.outboxDepth);
    latency.textContent =
      Object.entries(stats.lastLatencyMs)
        .map(([cls, ms]) => `${cls} ${Math.round(ms ?? 0)} ms`)
        .join(' · ') || 'no change synced yet';
  };
  const renderTier = () => {
    const t = client.tier;
    tier.dataset.tier = t.name;
    tier.textContent = `${t.name.replace('_', ' ')}${t.graceEndsAt ? ` · grace ends ${formatTime(t.graceEndsAt)}` : ''} · ${t.policy.realtime ? 'realtime' : `batched every ${t.policy.batchWindowMs / 1000} s`} · ${t.policy.crossDevice ? 'shared across devices' : 'crisis data shared, the rest backed up only'}`;
  };
  const renderDevices = () =>
    replace(
      devices,
      ...client.devices().map((cert) =>
        h('li', { 'data-device': cert.device }, `${short(cert.device)}${cert.device === self ? ' (this device)' : ''}`),
      ),
    );

  const pairingArea = h('div', { class: 'pairing', 'data-testid': 'pairing' });
  const pair = h('button', { type: 'button', 'data-testid': 'pair-start' }, 'Link a new device');
  pair.addEventListener('click', async () => {
    pair.disabled = true;
    replace(pairingArea, h('p', { role: 'status' }, 'Opening a pairing session…'));
    try {
      const { code, linked } = await client.startPairing({ ttlMs: 120_000 });
      const qr = h('div', { class: 'qr', role: 'img', 'aria-label': 'QR code of the pairing code' });
      qr.innerHTML = renderSVG(code, { border: 2 });
      replace(
        pairingArea,
        h('p', {}, 'On the new device choose “Link this device” and enter this code (valid 2 minutes):'),
        h('p', { class: 'code', 'data-testid': 'pair-code' }, code),
        qr,
      );
      const cert = await linked;
      replace(pairingArea, h('p', { role: 'status', 'data-testid': 'pair-done' }, `Linked device ${short(cert.device)}.`));
    } catch (error) {
      replace(pairingArea, h('p', { role: 'alert' }, `Pairing failed: ${error instanceof Error ? error.message : String(error)}`));
    } finally {
      pair.disabled = false;
    }
  });

  const syncNow = h('button', { type: 'button', 'data-testid': 'sync-now' }, 'Sync now');
  syncNow.addEventListener('click', async () => {
    saved.textContent = 'Sending…';
    try {
      await client.flush();
      saved.textContent = `Everything is saved on the relay (${new Date().toLocaleTimeString()}).`;
      saved.dataset.flushed = String(Date.now());
    } catch (error) {
      saved.textContent = `Not saved yet: ${error instanceof Error ? error.message : String(error)}`;
    }
  });
  const signOut = h('button', { type: 'button', class: 'danger' }, 'Sign out and wipe this device');
  signOut.addEventListener('click', () => {
    if (confirm('Remove this device’s keys and local data? Your other devices keep everything.')) void onSignOut();
  });

  client.on('status', renderStatus);
  client.on('tier', renderTier);
  client.on('devices', renderDevices);
  const timer = setInterval(renderStatus, 1000);
  client.on('status', (s) => s === 'closed' && clearInterval(timer));
  renderStatus();
  renderTier();
  renderDevices();

  return section(
    'devices',
    'Devices and sync',
    h(
      'dl',
      { class: 'facts' },
      h('dt', {}, 'This device'),
      h('dd', { 'data-testid': 'this-device' }, short(self)),
      h('dt', {}, 'Plan'),
      tier,
      h('dt', {}, 'Sync'),
      status,
      h('dt', {}, 'Last contact with the relay'),
      contact,
      h('dt', {}, 'Outbox'),
      outbox,
      h('dt', {}, 'Last sync latency'),
      latency,
    ),
    h('h3', {}, 'Linked devices'),
    devices,
    h('div', { class: 'inline-form' }, syncNow, pair, signOut),
    saved,
    pairingArea,
    problemsBox,
  );
};
