import { type Browser, type BrowserContext, type Page, type TestInfo, expect } from '@playwright/test';

export interface Device {
  readonly context: BrowserContext;
  readonly page: Page;
  readonly name: string;
}

/** A device is a browser context of its own: its own IndexedDB, localStorage and network. */
export const openDevice = async (browser: Browser, name: string, path = '/'): Promise<Device> => {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[${name}] page error: ${error.message}`));
  await page.goto(path);
  return { context, page, name };
};

export const whenReady = (page: Page) => expect(page.locator('body')).toHaveAttribute('data-ready', 'true', { timeout: 20_000 });

/** Onboarding: a new user on this device (recovery words shown once, acknowledged). */
export const createUser = async (device: Device): Promise<void> => {
  const { page } = device;
  await page.getByTestId('create-user').click();
  await expect(page.getByTestId('recovery-words').locator('li')).toHaveCount(12);
  await page.getByTestId('words-saved').check();
  await page.getByTestId('words-continue').click();
  await whenReady(page);
  await expect(page.getByTestId('sync-status')).toHaveAttribute('data-status', 'synced', { timeout: 15_000 });
};

/** Links `joiner` to `existing`'s user with the pairing code `existing` shows. */
export const pair = async (existing: Device, joiner: Device): Promise<void> => {
  await existing.page.getByTestId('pair-start').click();
  const code = (await existing.page.getByTestId('pair-code').textContent({ timeout: 15_000 }))!.trim();
  await joiner.page.getByTestId('pair-code-input').fill(code);
  await joiner.page.getByTestId('pair-join').click();
  await whenReady(joiner.page);
  await expect(existing.page.getByTestId('pair-done')).toBeVisible();
  await expect(joiner.page.getByTestId('sync-status')).toHaveAttribute('data-status', 'synced', { timeout: 15_000 });
};

/** A user with two linked devices, A and B. */
export const twoDevices = async (browser: Browser, path = '/'): Promise<[Device, Device]> => {
  const a = await openDevice(browser, 'A', path);
  await createUser(a);
  const b = await openDevice(browser, 'B', path);
  await pair(a, b);
  await expect(a.page.getByTestId('device-list').locator('li')).toHaveCount(2);
  await expect(b.page.getByTestId('device-list').locator('li')).toHaveCount(2);
  return [a, b];
};

/** Posts a signed test webhook through the dev server (the page's dev buttons). */
export const webhook = async (device: Device, event: 'upgrade' | 'payment_failed' | 'recovered' | 'expired', outcome?: string): Promise<void> => {
  const result = device.page.getByTestId('webhook-result');
  await device.page.evaluate(() => document.querySelector('[data-testid="webhook-result"]')?.removeAttribute('data-outcome'));
  await device.page.getByTestId(`webhook-${event}`).click();
  if (outcome) await expect(result).toHaveAttribute('data-outcome', outcome);
  else await expect(result).toHaveAttribute('data-outcome', /.+/);
};

export const expectTier = (device: Device, tier: string, timeout = 5_000) => expect(device.page.getByTestId('tier')).toHaveAttribute('data-tier', tier, { timeout });

/** Saves a screenshot of a device's page (or of one element of it) under this test's output directory. */
export const shot = async (testInfo: TestInfo, device: Device, name: string, selector?: string): Promise<void> => {
  const path = testInfo.outputPath(`${name}.png`);
  if (selector) await device.page.locator(selector).screenshot({ path });
  else await device.page.screenshot({ path, fullPage: false });
};

/** Types at the end of a safety-plan field (crisis class: syncs at once on every tier). */
export const typeInPlan = async (device: Device, field: 'warningSigns' | 'coping' | 'reasons', text: string): Promise<void> => {
  const area = device.page.getByTestId(`plan-${field}`);
  await area.click();
  await area.press('End');
  await area.pressSequentially(text);
};

export const closeAll = async (...devices: Device[]): Promise<void> => {
  for (const d of devices) await d.context.close();
};

/** The error codes the page's client reported (its "Sync problems" list). */
export const errorCodes = (page: Page): Promise<string[]> =>
  page.locator('[data-testid="sync-errors"] li').evaluateAll((items) => items.map((li) => li.getAttribute('data-code') ?? ''));

/** Clicks "Sync now" and waits until the client's flush() resolved (every change proved on the relay). */
export const syncNow = async (page: Page, timeout = 15_000): Promise<void> => {
  const result = page.getByTestId('sync-now-result');
  await result.evaluate((el) => el.removeAttribute('data-flushed'));
  await page.getByTestId('sync-now').click();
  await expect(result).toHaveAttribute('data-flushed', /\d+/, { timeout });
};

/**
 * How many Yjs updates the page's documents hold in IndexedDB (y-indexeddb keeps each local
 * update as one record until it compacts): a way to see that an edit is on disk.
 */
export const storedUpdates = (page: Page): Promise<number> =>
  page.evaluate(async () => {
    let count = 0;
    for (const info of await indexedDB.databases()) {
      if (!info.name?.includes('-doc-')) continue;
      const db = await new Promise<IDBDatabase>((resolve, reject) => {
        const request = indexedDB.open(info.name!);
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
      if (db.objectStoreNames.contains('updates')) {
        count += await new Promise<number>((resolve, reject) => {
          const request = db.transaction('updates').objectStore('updates').count();
          request.onsuccess = () => resolve(request.result);
          request.onerror = () => reject(request.error);
        });
      }
      db.close();
    }
    return count;
  });
