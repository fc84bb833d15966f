import { expect, test } from '@playwright/test';
import { closeAll, expectTier, shot, syncNow, twoDevices } from './support.js';

// Test 3: on trial, a safety-plan edit reaches device B within 1 s; a check-in does not cross.
test('on trial, a safety-plan edit appears on B within 1 s while a check-in stays on A', async ({ browser }, testInfo) => {
  const [a, b] = await twoDevices(browser);
  await expectTier(a, 'trial');
  await expectTier(b, 'trial');

  // A check-in on A, sent to the relay now ("Sync now" resolves once the relay's log holds it).
  await a.page.locator('#checkin-note').fill('slept badly, walk helped');
  await a.page.getByRole('button', { name: 'Save check-in' }).click();
  await expect(a.page.getByTestId('checkins').locator('li')).toHaveCount(1);
  await syncNow(a.page);

  // Then a safety-plan edit: crisis data, shared at once on every tier.
  const typedAt = Date.now();
  await a.page.getByTestId('plan-coping').fill('cold water on my face');
  await expect(b.page.getByTestId('plan-coping')).toHaveValue('cold water on my face', { timeout: 1_000 });
  expect(Date.now() - typedAt).toBeLessThan(1_500);
  // The device panel (contract 4): nothing left in A's outbox once flushed, and the crisis
  // class's last latency from a local change to the relay's acknowledgement.
  await syncNow(a.page);
  await expect(a.page.getByTestId('outbox-depth')).toHaveText('0');
  await expect(a.page.getByTestId('latency')).toContainText(/safety_plan \d+ ms/);
  await expect(a.page.getByTestId('latency')).toContainText(/checkin \d+ ms/);

  // B is caught up with the relay (it already has the later crisis edit, and its own flush is
  // done), yet the check-in the relay has held since before did not cross on trial.
  await syncNow(b.page);
  await expect(b.page.getByTestId('sync-status')).toHaveAttribute('data-status', 'synced');
  await expect(b.page.getByTestId('checkins').locator('li')).toHaveCount(0);
  await expect(b.page.getByTestId('checkin-tier-note')).toContainText('stay on this device');
  await shot(testInfo, a, 'a-checkin-and-plan');
  await shot(testInfo, b, 'b-plan-only');
  await closeAll(a, b);
});
