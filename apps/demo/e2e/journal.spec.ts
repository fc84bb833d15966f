import { createHash, randomBytes } from 'node:crypto';
import { expect, test } from '@playwright/test';
import { closeAll, expectTier, shot, twoDevices, webhook } from './support.js';

// Test 9: two devices type in the rich-text journal and see each other's cursor; a 30 MiB
// attachment-sized update on premium syncs.
test('two devices type in the journal and see each other’s cursor', async ({ browser }, testInfo) => {
  const [a, b] = await twoDevices(browser);
  await webhook(a, 'upgrade', 'tier_changed');
  await expectTier(a, 'premium');
  await expectTier(b, 'premium');

  const editorA = a.page.getByTestId('journal').locator('.ProseMirror');
  const editorB = b.page.getByTestId('journal').locator('.ProseMirror');
  await editorA.click();
  await editorA.pressSequentially('Morning: slept better. ');
  await expect(editorB).toContainText('Morning: slept better.', { timeout: 2_000 });
  await editorB.click();
  await b.page.keyboard.press('ControlOrMeta+End');
  await editorB.pressSequentially('Evening: walked by the sea.');
  await expect(editorA).toContainText('Evening: walked by the sea.', { timeout: 2_000 });
  await expect(editorB).toContainText('Morning: slept better. Evening: walked by the sea.');

  // Each sees the other's caret, labelled with the other device.
  const deviceA = (await a.page.getByTestId('this-device').textContent())!.trim();
  const deviceB = (await b.page.getByTestId('this-device').textContent())!.trim();
  await expect(a.page.locator('.ProseMirror-yjs-cursor')).toContainText(deviceB, { timeout: 5_000 });
  await editorA.click();
  await expect(b.page.locator('.ProseMirror-yjs-cursor')).toContainText(deviceA, { timeout: 5_000 });
  await shot(testInfo, a, 'a-journal-cursors');
  await shot(testInfo, b, 'b-journal-cursors');
  await closeAll(a, b);
});

test('a 30 MiB attachment-sized update syncs on premium', async ({ browser }, testInfo) => {
  test.setTimeout(120_000);
  const [a, b] = await twoDevices(browser);
  await webhook(a, 'upgrade', 'tier_changed');
  await expectTier(a, 'premium');
  await expectTier(b, 'premium');

  // A 30 MiB file (random, so nothing compresses it) attached on A arrives whole on B.
  const bytes = randomBytes(30 * 1024 * 1024);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  await a.page.getByTestId('journal-attach').setInputFiles({ name: 'scan.bin', mimeType: 'application/octet-stream', buffer: bytes });
  await expect(a.page.locator(`[data-testid="attachments"] li[data-sha256="${sha256}"]`)).toHaveCount(1, { timeout: 30_000 });
  const arrived = b.page.locator(`[data-testid="attachments"] li[data-sha256="${sha256}"]`);
  await expect(arrived).toHaveCount(1, { timeout: 60_000 });
  await expect(arrived).toHaveAttribute('data-size', String(bytes.length));
  // B checks the bytes it holds, not only the label A wrote.
  const digestAtB = await b.page.evaluate(async () => {
    const { client } = (window as unknown as { keel: { client: { open(s: { class: string; name: string }): Promise<{ getMap(n: string): Map<string, { get(k: string): unknown }> }> } } }).keel;
    const doc = await client.open({ class: 'history', name: 'journal-attachments' });
    const [entry] = [...doc.getMap('files').values()];
    const data = entry!.get('bytes') as Uint8Array<ArrayBuffer>;
    const digest = await crypto.subtle.digest('SHA-256', data);
    return [...new Uint8Array(digest)].map((x) => x.toString(16).padStart(2, '0')).join('');
  });
  expect(digestAtB).toBe(sha256);
  await expect(b.page.getByTestId('sync-errors').locator('li')).toHaveCount(0);
  await shot(testInfo, b, 'b-attachment');
  await closeAll(a, b);
});
