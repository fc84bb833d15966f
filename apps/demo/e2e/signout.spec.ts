import { expect, test } from '@playwright/test';
import { closeAll, shot, twoDevices } from './support.js';

const keelDatabases = (page: import('@playwright/test').Page) =>
  page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name ?? '').filter((n) => n.startsWith('keel-')));

// Sign out and wipe (contract 3): this device's keys and every local store go; the other device keeps everything.
test('sign out and wipe removes this device’s data and keys; the other device keeps the plan', async ({ browser }, testInfo) => {
  const [a, b] = await twoDevices(browser);
  await b.page.getByTestId('plan-reasons').fill('my niece');
  await expect(a.page.getByTestId('plan-reasons')).toHaveValue('my niece', { timeout: 2_000 });
  expect((await keelDatabases(b.page)).length).toBeGreaterThan(1);

  b.page.once('dialog', (dialog) => void dialog.accept());
  await b.page.getByRole('button', { name: 'Sign out and wipe this device' }).click();
  // Back to onboarding, with no identity and no Keel database left on B.
  await expect(b.page.getByTestId('create-user')).toBeVisible({ timeout: 15_000 });
  expect(await b.page.evaluate(() => localStorage.getItem('keel-demo-identity'))).toBeNull();
  await expect.poll(() => keelDatabases(b.page), { timeout: 10_000 }).toEqual([]);
  await shot(testInfo, b, 'b-signed-out');
  await expect(a.page.getByTestId('plan-reasons')).toHaveValue('my niece');
  await closeAll(a, b);
});
