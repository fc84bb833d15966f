import { createIdentity, createMemoryStore, linkNewDevice } from '@keel/client';
import { createNodeClient } from '@keel/client/node';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../support/devices.js';
import { useTestScope } from '../support/scope.js';

const scope = useTestScope();

/** Two devices of one user on a trial relay (the tier that fans out least: only crisis lanes cross). */
const pair = async () => {
  const relay = await scope.relay({ defaultTier: 'trial' });
  const idA = await createIdentity();
  const a = await scope.device(relay.url, idA);
  await a.client.whenSynced();
  const b = await scope.device(relay.url, await linkNewDevice(idA));
  await b.client.whenSynced();
  return { relay, a, b };
};

describe('questionnaires filled in over time', () => {
  it('a PHQ-9 item 9 answer above 0 on an unfinished form puts every device into crisis mode at once', async () => {
    const { a, b } = await pair();
    const name = 'phq9-2026-11-26';
    // The first answers: nothing to report yet.
    const first = await a.client.recordAssessment(name, { kind: 'phq9', answers: [1, 2, null, null, null, null, null, null, null] });
    expect(first).toMatchObject({ crisis: false, complete: false, total: 3 });
    expect(a.client.crisisMode).toBe(false);

    const crisisAtB = new Promise<void>((resolve) => b.client.on('crisis', (active) => active && resolve()));
    // Item 9 answered "several days" before items 3–8: a crisis now, not when the form is done.
    const second = await a.client.recordAssessment(name, { kind: 'phq9', answers: [1, 2, null, null, null, null, null, null, 1] });
    expect(second).toMatchObject({ crisis: true, complete: false, reasons: ['phq9_item9'] });
    expect(a.client.crisisMode).toBe(true);
    await crisisAtB;
    expect(b.client.crisisMode).toBe(true);

    // The partial form itself reached B (crisis lane on trial), marked incomplete, answers kept as given.
    const atB = await b.client.open({ class: 'assessment', name });
    await waitFor(() => atB.getMap('assessment').get('crisis') === true, 5_000, 'the assessment at B');
    expect(atB.getMap('assessment').toJSON()).toMatchObject({
      kind: 'phq9',
      complete: false,
      total: 4,
      answers: [1, 2, null, null, null, null, null, null, 1],
      reasons: ['phq9_item9'],
    });
    expect(a.errors).toEqual([]);
    expect(b.errors).toEqual([]);
  });

  it('totals count only once the form is complete, and bad forms are refused with SCHEMA', async () => {
    const { a } = await pair();
    // 21 points over seven answers of GAD-7… but two are open, so not a score yet.
    expect(await a.client.recordAssessment('gad7', { kind: 'gad7', answers: [3, 3, 3, 3, 3, null, null] })).toMatchObject({ crisis: false, complete: false });
    expect(a.client.crisisMode).toBe(false);
    const done = await a.client.recordAssessment('gad7', { kind: 'gad7', answers: [3, 3, 3, 3, 3, 0, 0] });
    expect(done).toMatchObject({ crisis: true, complete: true, total: 15, reasons: ['gad7_total'] });
    expect(a.client.crisisMode).toBe(true);

    for (const bad of [{ kind: 'gad7', answers: [3, 3] }, { kind: 'phq9', answers: Array(9).fill(4) }, { kind: 'gad7', answers: Array(7).fill(undefined) }]) {
      await expect(a.client.recordAssessment('bad', bad)).rejects.toMatchObject({ code: 'SCHEMA' });
    }
  });

  it('the client stamps crisis and assessment records with the clock it was given', async () => {
    const relay = await scope.relay();
    const fixed = Date.UTC(2030, 0, 2, 3, 4, 5);
    const client = await createNodeClient({ url: relay.url, identity: await createIdentity(), storage: createMemoryStore(), now: () => fixed });
    scope.defer(() => client.close());
    await client.recordAssessment('phq9', { kind: 'phq9', answers: [0, 0, 0, 0, 0, 0, 0, 0, 2] });
    const assessment = await client.open({ class: 'assessment', name: 'phq9' });
    expect(assessment.getMap('assessment').get('at')).toBe(fixed);
    const state = await client.open({ class: 'crisis_mode', name: 'state' });
    expect(state.getMap('crisis').toJSON()).toEqual({ active: true, since: fixed, source: 'assessment' });
  });
});
