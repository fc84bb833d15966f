import { expect, test } from '@playwright/test';
import { type Device, closeAll, createUser, errorCodes, openDevice, pair, shot, syncNow, whenReady } from './support.js';

// Test 7: two tabs of one device edit at once, the leader tab closes mid-stream: all three pages
// (two tabs + another device) converge, every flush() resolves, no COUNTER_REUSED anywhere.
test('two tabs of one device edit at once; the leader tab closes mid-stream; everything converges', async ({ browser }, testInfo) => {
  const a1 = await openDevice(browser, 'A-tab1');
  await createUser(a1);
  const b = await openDevice(browser, 'B');
  await pair(a1, b);
  // A second tab of device A: same profile, same identity and IndexedDB.
  const tab2Page = await a1.context.newPage();
  await tab2Page.goto('/');
  await whenReady(tab2Page);
  const a2: Device = { context: a1.context, page: tab2Page, name: 'A-tab2' };

  const words = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`).join(' ') + ' ';
  const text1 = words('one', 12);
  const text2 = words('two', 30);
  await a1.page.getByTestId('plan-warningSigns').click();
  await a2.page.getByTestId('plan-coping').click();
  // Both tabs type at once; tab 1 (the first, so the leader) is closed while tab 2 still types.
  const typing2 = a2.page.getByTestId('plan-coping').pressSequentially(text2, { delay: 40 });
  await a1.page.getByTestId('plan-warningSigns').pressSequentially(text1, { delay: 20 });
  const flushed1 = a1.page.evaluate(() => (window as unknown as { keel: { client: { flush(): Promise<void> } } }).keel.client.flush().then(() => 'flushed'));
  await a1.page.close();
  await flushed1.catch(() => 'page closed');
  await typing2;

  // Every remaining page's flush resolves, and all three views agree.
  await syncNow(a2.page, 20_000);
  await syncNow(b.page, 20_000);
  for (const d of [a2, b]) {
    await expect(d.page.getByTestId('plan-warningSigns')).toHaveValue(text1, { timeout: 15_000 });
    await expect(d.page.getByTestId('plan-coping')).toHaveValue(text2, { timeout: 15_000 });
  }
  // A third look: a fresh tab of device A opens with the same content.
  const a3Page = await a1.context.newPage();
  await a3Page.goto('/');
  await whenReady(a3Page);
  await expect(a3Page.getByTestId('plan-warningSigns')).toHaveValue(text1, { timeout: 15_000 });
  await expect(a3Page.getByTestId('plan-coping')).toHaveValue(text2, { timeout: 15_000 });
  for (const page of [a2.page, b.page, a3Page]) expect(await errorCodes(page)).not.toContain('COUNTER_REUSED');
  await shot(testInfo, a2, 'a-tab2-converged');
  await shot(testInfo, b, 'b-converged');
  await closeAll(a2, b);
});
