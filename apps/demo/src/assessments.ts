import { h, section } from './dom.js';
import type { DemoClient } from './keel-api.js';

// PHQ-9 and GAD-7 (Pfizer; free to use): "Over the last 2 weeks, how often have you been bothered by…"
const PHQ9 = [
  'Little interest or pleasure in doing things',
  'Feeling down, depressed, or hopeless',
  'Trouble falling or staying asleep, or sleeping too much',
  'Feeling tired or having little energy',
  'Poor appetite or overeating',
  'Feeling bad about yourself — or that you are a failure or have let yourself or your family down',
  'Trouble concentrating on things, such as reading the newspaper or watching television',
  'Moving or speaking so slowly that other people could have noticed, or the opposite — being so fidgety or restless that you have been moving around a lot more than usual',
  'Thoughts that you would be better off dead, or of hurting yourself in some way',
];
const GAD7 = [
  'Feeling nervous, anxious, or on edge',
  'Not being able to stop or control worrying',
  'Worrying too much about different things',
  'Trouble relaxing',
  'Being so restless that it is hard to sit still',
  'Becoming easily annoyed or irritable',
  'Feeling afraid, as if something awful might happen',
];
const CHOICES = ['Not at all', 'Several days', 'More than half the days', 'Nearly every day'];

type Answer = 0 | 1 | 2 | 3 | null;

/**
 * One questionnaire. Every answer is recorded at once, unfinished forms included (contract 5):
 * a PHQ-9 item 9 answer above 0 turns crisis mode on the moment it is given, on every device.
 */
const renderForm = (client: DemoClient, kind: 'phq9' | 'gad7', title: string, items: readonly string[]): HTMLElement => {
  const answers: Answer[] = items.map(() => null);
  const result = h('p', { class: 'result', role: 'status', 'data-testid': `${kind}-result` });
  const onChange = async (index: number, value: number) => {
    answers[index] = value as Answer;
    try {
      const outcome = (await client.recordAssessment(kind, { kind, answers: [...answers] })) as { total?: number; crisis?: boolean };
      const answered = answers.filter((a) => a !== null).length;
      result.textContent =
        `${answered} of ${items.length} answered` +
        (answered === items.length && outcome.total !== undefined ? ` · total ${outcome.total}` : '') +
        (outcome.crisis ? ' · you are not alone: support is shown at the top of the page' : '');
    } catch (error) {
      result.textContent = `Could not record this answer: ${error instanceof Error ? error.message : String(error)}`;
    }
  };
  const fieldsets = items.map((text, i) =>
    h(
      'fieldset',
      { class: 'item', 'data-testid': `${kind}-item-${i + 1}` },
      h('legend', {}, `${i + 1}. ${text}`),
      ...CHOICES.map((label, value) => {
        const id = `${kind}-${i}-${value}`;
        return h(
          'span',
          { class: 'choice' },
          h('input', { type: 'radio', id, name: `${kind}-${i}`, value, onchange: () => void onChange(i, value) }),
          h('label', { for: id }, label),
        );
      }),
    ),
  );
  return h('details', { class: 'form', 'data-testid': `${kind}-form` }, h('summary', {}, title), h('p', { class: 'hint' }, 'Over the last 2 weeks, how often have you been bothered by…'), ...fieldsets, result);
};

export const renderAssessments = (client: DemoClient): HTMLElement =>
  section(
    'assessments',
    'Check-in questionnaires',
    h('p', { class: 'hint' }, 'Each answer is saved as you give it. If an answer says you are at risk, support appears on all your devices at once.'),
    renderForm(client, 'phq9', 'PHQ-9 (mood)', PHQ9),
    renderForm(client, 'gad7', 'GAD-7 (anxiety)', GAD7),
  );
