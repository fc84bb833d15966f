import { expect, test } from '@playwright/test';
import { closeAll, shot, twoDevices } from './support.js';

// Test 6: a PHQ-9 item 9 answer above 0, the form left unfinished, puts every device into crisis mode.
test('PHQ-9 item 9 above 0 on an unfinished form puts every device into crisis mode', async ({ browser }, testInfo) => {
  const [a, b] = await twoDevices(browser);
  for (const d of [a, b]) await expect(d.page.getByTestId('crisis-banner')).toBeHidden();
  const form = a.page.getByTestId('phq9-form');
  await form.locator('summary').click();
  await a.page.getByTestId('phq9-item-1').getByLabel('Several days').check();
  await expect(a.page.getByTestId('phq9-result')).toContainText('1 of 9 answered');
  await expect(a.page.getByTestId('crisis-banner')).toBeHidden();
  await a.page.getByTestId('phq9-item-9').getByLabel('Several days').check();
  // Two of nine items answered: the form is unfinished, and crisis mode is on everywhere.
  await expect(a.page.getByTestId('phq9-result')).toContainText('2 of 9 answered');
  for (const d of [a, b]) {
    await expect(d.page.getByTestId('crisis-banner')).toBeVisible({ timeout: 2_000 });
    await expect(d.page.getByTestId('crisis-banner').getByRole('link', { name: '988' })).toHaveAttribute('href', 'tel:988');
    await shot(testInfo, d, `${d.name}-crisis`);
  }
  await closeAll(a, b);
});
