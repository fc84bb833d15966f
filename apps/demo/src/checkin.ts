import * as Y from 'yjs';
import { formatTime, h, replace, section } from './dom.js';
import type { DemoClient } from './keel-api.js';

const MOODS = ['Very low', 'Low', 'Okay', 'Good', 'Very good'];

/**
 * A mood check-in: a BASIC_FEATURES document. On trial it is backed up on the relay but not
 * shared with the user's other devices (the tier's "cross-device sync: no"); from basic up it is.
 */
export const renderCheckin = async (client: DemoClient, deviceLabel: string): Promise<HTMLElement> => {
  const doc = await client.open({ class: 'checkin', name: 'moods' });
  const entries = doc.getArray<Y.Map<unknown>>('entries');
  const list = h('ul', { class: 'checkins', 'data-testid': 'checkins' });
  const render = () =>
    replace(
      list,
      ...entries
        .toArray()
        .slice(-10)
        .reverse()
        .map((e) => h('li', {}, `${MOODS[Number(e.get('mood'))] ?? '?'} — ${String(e.get('note') ?? '')} (${String(e.get('device'))}, ${formatTime(Number(e.get('at')))})`)),
    );
  entries.observeDeep(render);
  render();
  const mood = h('select', { id: 'checkin-mood' }, ...MOODS.map((m, i) => h('option', { value: i, ...(i === 2 ? { selected: true } : {}) }, m)));
  const note = h('input', { id: 'checkin-note', autocomplete: 'off', maxlength: 200 });
  const form = h(
    'form',
    {
      class: 'inline-form',
      onsubmit: (event: Event) => {
        event.preventDefault();
        const entry = new Y.Map<unknown>();
        entry.set('mood', Number(mood.value));
        entry.set('note', note.value.trim());
        entry.set('device', deviceLabel);
        entry.set('at', Date.now());
        entries.push([entry]);
        note.value = '';
      },
    },
    h('label', { for: 'checkin-mood' }, 'How are you?'),
    mood,
    h('label', { for: 'checkin-note' }, 'Note'),
    note,
    h('button', { type: 'submit' }, 'Save check-in'),
  );
  const tierNote = h('p', { class: 'hint', 'data-testid': 'checkin-tier-note' });
  const explain = () => {
    tierNote.textContent = client.tier.policy.crossDevice
      ? 'Check-ins are shared with your other devices on your plan.'
      : 'On the trial plan, check-ins are backed up but stay on this device; basic and premium share them.';
  };
  client.on('tier', explain);
  explain();
  return section('checkin', 'Mood check-in', tierNote, form, list);
};
