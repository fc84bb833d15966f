import { expect, test } from '@playwright/test';
import { closeAll, shot, twoDevices } from './support.js';

// Test 1: a second device (its own browser context) joins the user with the code the first shows.
test('pairing a second device by code', async ({ browser }, testInfo) => {
  const [a, b] = await twoDevices(browser);
  await shot(testInfo, a, 'a-after-pairing');
  await shot(testInfo, b, 'b-after-pairing');
  // Both list the same two devices, each marking itself.
  const listA = await a.page.getByTestId('device-list').locator('li').allTextContents();
  const listB = await b.page.getByTestId('device-list').locator('li').allTextContents();
  expect(listA.map((t) => t.slice(0, 8)).sort()).toEqual(listB.map((t) => t.slice(0, 8)).sort());
  expect(listA.filter((t) => t.includes('(this device)'))).toHaveLength(1);
  expect(await a.page.getByTestId('this-device').textContent()).not.toEqual(await b.page.getByTestId('this-device').textContent());
  // The link is real: a crisis-class edit on the new device reaches the first one.
  await b.page.getByTestId('plan-reasons').fill('my niece');
  await expect(a.page.getByTestId('plan-reasons')).toHaveValue('my niece', { timeout: 2_000 });
  await closeAll(a, b);
});
