import { expect, test } from '@playwright/test';
import { closeAll, expectTier, shot, twoDevices, webhook } from './support.js';

const DAY = 24 * 60 * 60 * 1000;

// Test 5: payment failed → grace banner with its end date on every device; recovered → premium realtime sync.
test('a failed payment shows the grace end date on every device; recovery brings realtime sync back', async ({ browser }, testInfo) => {
  const [a, b] = await twoDevices(browser);
  await webhook(a, 'upgrade', 'tier_changed');
  await expectTier(a, 'premium');
  await expectTier(b, 'premium');

  const failedAt = Date.now();
  await webhook(a, 'payment_failed', 'grace_started');
  for (const d of [a, b]) {
    await expectTier(d, 'grace_period');
    const banner = d.page.getByTestId('grace-banner');
    await expect(banner).toBeVisible();
    await expect(banner).toContainText('until');
    // Premium's first grace period is 14 days (the relay's default policy).
    const endsAt = Number(await banner.getAttribute('data-ends-at'));
    expect(Math.abs(endsAt - (failedAt + 14 * DAY))).toBeLessThan(60_000);
    await expect(banner).toContainText(new Date(endsAt).getFullYear().toString());
    await expect(d.page.getByTestId('tier')).toContainText('grace ends');
    await shot(testInfo, d, `${d.name}-grace`);
  }

  await webhook(a, 'recovered', 'recovered');
  for (const d of [a, b]) {
    await expectTier(d, 'premium');
    await expect(d.page.getByTestId('grace-banner')).toBeHidden();
  }
  // Premium is realtime and cross-device: a check-in (basic features) reaches B at once.
  await a.page.locator('#checkin-note').fill('better today');
  await a.page.getByRole('button', { name: 'Save check-in' }).click();
  await expect(b.page.getByTestId('checkins').locator('li')).toHaveCount(1, { timeout: 1_000 });
  await expect(b.page.getByTestId('checkins')).toContainText('better today');
  await shot(testInfo, b, 'B-premium-again');
  await closeAll(a, b);
});
