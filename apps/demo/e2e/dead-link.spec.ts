import { expect, test } from '@playwright/test';
import { closeAll, createUser, errorCodes, openDevice, pair, shot } from './support.js';
import { startTcpProxy } from './tcp-proxy.js';

// Test 8: a link that silently drops traffic is detected within 10 s, and edits made meanwhile arrive once it heals.
test('a silently dropping link is detected within 10 s; edits made meanwhile arrive once it heals', async ({ browser, baseURL }, testInfo) => {
  const config = (await (await fetch(`${baseURL}/config.json`)).json()) as { relayUrl: string };
  const proxy = await startTcpProxy(Number(new URL(config.relayUrl).port));
  try {
    // A reaches the relay only through the proxy (the page takes its relay URL from ?relay=); B directly.
    const a = await openDevice(browser, 'A', `/?relay=${encodeURIComponent(`ws://127.0.0.1:${proxy.port}`)}`);
    await createUser(a);
    const b = await openDevice(browser, 'B');
    await pair(a, b);
    await a.page.getByTestId('plan-coping').fill('before the drop');
    await expect(b.page.getByTestId('plan-coping')).toHaveValue('before the drop', { timeout: 2_000 });

    proxy.drop();
    const droppedAt = Date.now();
    // Found by the client itself (no close, no error from the socket): it reports LINK_DEAD, leaves
    // "connected" and tries again (through the proxy, which still swallows everything).
    await expect.poll(() => errorCodes(a.page), { timeout: 10_000 }).toContain('LINK_DEAD');
    await expect(a.page.getByTestId('sync-status')).toHaveAttribute('data-status', /offline|connecting/);
    expect(Date.now() - droppedAt).toBeLessThan(10_000);
    await expect(a.page.getByTestId('last-contact')).toContainText('s ago');
    await a.page.getByTestId('plan-coping').fill('before the drop, and during it');
    await shot(testInfo, a, 'a-link-dead');
    // Nothing passes while the link is dead.
    await expect(b.page.getByTestId('plan-coping')).toHaveValue('before the drop');

    proxy.heal();
    await expect(b.page.getByTestId('plan-coping')).toHaveValue('before the drop, and during it', { timeout: 20_000 });
    await expect(a.page.getByTestId('sync-status')).toHaveAttribute('data-status', 'synced', { timeout: 20_000 });
    await shot(testInfo, b, 'b-after-heal');
    await closeAll(a, b);
  } finally {
    await proxy.close();
  }
});
