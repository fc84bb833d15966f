import { type Identity, createSessionHandoff } from '@keel/client';
import { createBrowserClient } from '@keel/client/browser';
import { renderAssessments } from './assessments.js';
import { renderBanners } from './banners.js';
import { renderBreathing } from './breathing.js';
import { renderCheckin } from './checkin.js';
import { type DemoConfig, loadConfig } from './config.js';
import { renderDevTools } from './dev-tools.js';
import { renderDevices } from './devices.js';
import { h, replace } from './dom.js';
import { forgetIdentity, loadIdentity, saveIdentity } from './identity-store.js';
import { renderJournal } from './journal.js';
import type { DemoClient } from './keel-api.js';
import { renderOnboarding } from './onboarding.js';
import { renderSafetyPlan } from './safety-plan.js';

const root = document.getElementById('app')!;

/** Makes the app shell (and the 988 line) open without a network: see public/sw.js. */
const registerServiceWorker = () => {
  if (!('serviceWorker' in navigator)) return;
  const mark = () => navigator.serviceWorker.controller && (document.body.dataset.sw = 'controlled');
  navigator.serviceWorker.addEventListener('controllerchange', mark);
  mark();
  void navigator.serviceWorker.register('/sw.js').catch(() => {});
};

/** Asks the browser not to evict this origin's storage (the device's keys and unsynced edits live there). */
const persistStorage = async (): Promise<string> => {
  try {
    return (await navigator.storage?.persist?.()) ? 'persistent' : 'best effort (the browser may evict it)';
  } catch {
    return 'unknown';
  }
};

const startApp = async (config: DemoConfig, identity: Identity) => {
  replace(root, h('p', { role: 'status' }, 'Opening your data…'));
  const client: DemoClient = await createBrowserClient({ url: config.relayUrl, identity, name: identity.device.deviceId });
  const deviceLabel = `device ${identity.device.deviceId.slice(0, 8)}`;
  const handoff = await createSessionHandoff(client);
  handoff.announce({ active: true });
  const signOut = async () => {
    handoff.close();
    // Closes the client and deletes this device's keys and every Keel store of this user here.
    await client.signOut({ wipe: true });
    forgetIdentity();
    location.reload();
  };
  const storage = h('p', { class: 'hint', 'data-testid': 'storage' }, 'Storage: …');
  void persistStorage().then((s) => (storage.textContent = `Storage on this device: ${s}. Identity kept in localStorage for the demo; a real app keeps it in the platform's secure storage.`));
  const sections = [
    renderBanners(client),
    await renderSafetyPlan(client),
    renderAssessments(client),
    await renderCheckin(client, deviceLabel),
    await renderBreathing(handoff),
    await renderJournal(client, deviceLabel),
    renderDevices(client, signOut),
    config.dev ? renderDevTools(client) : undefined,
    storage,
  ];
  replace(root, ...sections);
  document.body.dataset.ready = 'true';
  // For the browser tests and curious developers: the live client of this page.
  (window as unknown as { keel: unknown }).keel = { client, handoff };
};

const boot = async () => {
  registerServiceWorker();
  const config = await loadConfig();
  const identity = await loadIdentity();
  if (identity) return startApp(config, identity);
  renderOnboarding(root, config.relayUrl, (fresh) => {
    saveIdentity(fresh);
    void startApp(config, fresh);
  });
};

boot().catch((error: unknown) => {
  replace(root, h('p', { role: 'alert' }, `The demo could not start: ${error instanceof Error ? error.message : String(error)}`));
});
