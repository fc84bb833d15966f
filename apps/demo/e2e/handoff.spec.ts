import { expect, test } from '@playwright/test';
import { closeAll, expectTier, shot, twoDevices, webhook } from './support.js';

/** Box breathing, as the demo's default pattern: 4 s each of in, hold, out, hold. */
const BOX = [4000, 4000, 4000, 4000];
const phaseIndexAt = (elapsed: number) => {
  let within = elapsed % BOX.reduce((a, b) => a + b, 0);
  for (let i = 0; i < BOX.length; i++) {
    if (within < BOX[i]!) return { index: i, toBoundary: Math.min(within, BOX[i]! - within) };
    within -= BOX[i]!;
  }
  return { index: 0, toBoundary: 0 };
};

const readBreath = (el: Element) => {
  const d = (el as HTMLElement).dataset;
  return { state: d.state, phase: d.phase, index: Number(d.phaseIndex), elapsed: Number(d.elapsed), at: Number(d.at), session: d.session };
};

// Test 2: the breathing exercise started on device A continues on device B at the same phase.
test('handoff: a breathing exercise started on A continues on B at the same phase', async ({ browser }, testInfo) => {
  const [a, b] = await twoDevices(browser);
  // Sessions cross devices from basic up; the dev relay's "upgrade" makes this user premium.
  await webhook(a, 'upgrade', 'tier_changed');
  await expectTier(a, 'premium');
  await expectTier(b, 'premium');

  const breathA = a.page.getByTestId('breathing');
  const breathB = b.page.getByTestId('breathing');
  await breathA.scrollIntoViewIfNeeded();
  await breathB.scrollIntoViewIfNeeded();
  await a.page.getByTestId('breathing-start').click();
  await expect(breathA).toHaveAttribute('data-state', 'running');
  await shot(testInfo, a, 'handoff-1-a-running', '#breathing');
  // B is offered the running exercise.
  await expect(b.page.getByTestId('breathing-continue')).toBeVisible({ timeout: 3_000 });
  // Let it get past the first phase, so "the same phase" means something.
  await expect.poll(() => breathA.evaluate((el) => Number((el as HTMLElement).dataset.elapsed)), { timeout: 10_000 }).toBeGreaterThan(5_000);
  await shot(testInfo, b, 'handoff-2-b-offered', '#breathing');

  await b.page.getByTestId('breathing-continue').click();
  await expect(breathB).toHaveAttribute('data-state', 'running');
  // A learns that B took it over and stops.
  await expect(breathA).toHaveAttribute('data-state', 'handed-off', { timeout: 3_000 });
  const atA = await breathA.evaluate(readBreath);
  const atB = await breathB.evaluate(readBreath);
  expect(atB.session).toBe(atA.session);
  // B runs where A would be now: A's running time plus the wall-clock time since A's last frame.
  const expected = atA.elapsed + (atB.at - atA.at);
  expect(Math.abs(atB.elapsed - expected)).toBeLessThan(500);
  const phase = phaseIndexAt(expected);
  if (phase.toBoundary > 500) expect(atB.index).toBe(phase.index);
  await shot(testInfo, a, 'handoff-3-a-handed-off', '#breathing');
  await shot(testInfo, b, 'handoff-4-b-continues', '#breathing');
  await closeAll(a, b);
});
