import { expect, test } from '@playwright/test';
import { closeAll, shot, storedUpdates, twoDevices, typeInPlan, whenReady } from './support.js';

// Test 4: B goes offline, both edit, B reloads while offline, back online: both converge, nothing lost.
test('offline edits on both devices and a reload while offline converge, nothing lost', async ({ browser }, testInfo) => {
  const [a, b] = await twoDevices(browser);
  // The service worker holds the app shell, so the page opens again without a network.
  await expect(b.page.locator('body')).toHaveAttribute('data-sw', 'controlled', { timeout: 10_000 });
  await typeInPlan(a, 'warningSigns', 'shared start. ');
  await expect(b.page.getByTestId('plan-warningSigns')).toHaveValue('shared start. ', { timeout: 2_000 });

  await b.context.setOffline(true);
  await expect(b.page.getByTestId('sync-status')).toHaveAttribute('data-status', 'offline', { timeout: 10_000 });
  const storedBefore = await storedUpdates(b.page);
  await typeInPlan(a, 'warningSigns', 'A while B was away. ');
  await typeInPlan(a, 'coping', 'A: call Jo');
  await typeInPlan(b, 'warningSigns', 'B offline one. ');
  await typeInPlan(b, 'reasons', 'B: my garden');
  await b.page.locator('#contact-name').fill('Sam');
  await b.page.locator('#contact-phone').fill('+1 555 0100');
  await b.page.getByRole('button', { name: 'Add contact' }).click();
  // B's edits are on its disk (IndexedDB) before the reload: 15 + 12 keystrokes and a contact.
  await expect.poll(() => storedUpdates(b.page), { timeout: 5_000 }).toBeGreaterThanOrEqual(storedBefore + 28);

  await b.page.reload();
  await whenReady(b.page);
  await expect(b.page.getByTestId('plan-reasons')).toHaveValue('B: my garden');
  // Really offline: the page came from the service worker's cache, and the relay is out of reach.
  await expect(b.page.getByTestId('sync-status')).toHaveAttribute('data-status', /offline|connecting/);
  expect(await b.page.evaluate(() => navigator.onLine)).toBe(false);
  await expect(b.page.getByTestId('plan-warningSigns')).toHaveValue(/B offline one\./);
  await expect(b.page.getByTestId('contacts').locator('li')).toHaveCount(1);
  await shot(testInfo, b, 'b-reloaded-offline');

  await b.context.setOffline(false);
  for (const d of [a, b]) {
    await expect(d.page.getByTestId('plan-reasons')).toHaveValue('B: my garden', { timeout: 15_000 });
    await expect(d.page.getByTestId('plan-coping')).toHaveValue('A: call Jo', { timeout: 15_000 });
    await expect(d.page.getByTestId('contacts').locator('li')).toHaveCount(1, { timeout: 15_000 });
  }
  const signsA = await a.page.getByTestId('plan-warningSigns').inputValue();
  await expect(b.page.getByTestId('plan-warningSigns')).toHaveValue(signsA);
  for (const part of ['shared start. ', 'A while B was away. ', 'B offline one. ']) expect(signsA).toContain(part);
  await shot(testInfo, a, 'a-converged');
  await shot(testInfo, b, 'b-converged');
  await closeAll(a, b);
});
