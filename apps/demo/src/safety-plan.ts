import * as Y from 'yjs';
import { h, replace, section } from './dom.js';
import type { DemoClient } from './keel-api.js';
import { bindText } from './text-binding.js';

const FIELDS = [
  ['warningSigns', 'My warning signs', 'Thoughts, moods or situations that tell me a crisis may be coming'],
  ['coping', 'Things I can do on my own', 'Walk the dog, cold water on my face, my playlist…'],
  ['reasons', 'My reasons for living', 'What matters to me'],
] as const;

/**
 * The safety plan and crisis contacts: crisis-class documents, so they sync at once on every
 * tier, and they live on the device (IndexedDB) so they open without a network.
 */
export const renderSafetyPlan = async (client: DemoClient): Promise<HTMLElement> => {
  const plan = await client.open({ class: 'safety_plan', name: 'main' });
  const contactsDoc = await client.open({ class: 'crisis_contacts', name: 'main' });
  const fields = FIELDS.map(([key, label, hint]) => {
    const id = `plan-${key}`;
    const area = h('textarea', { id, rows: 3, 'aria-describedby': `${id}-hint`, 'data-testid': id });
    bindText(area, plan.getText(key));
    return h('div', { class: 'field' }, h('label', { for: id }, label), h('p', { id: `${id}-hint`, class: 'hint' }, hint), area);
  });

  const contacts = contactsDoc.getArray<Y.Map<string>>('contacts');
  const list = h('ul', { class: 'contacts', 'data-testid': 'contacts' });
  const renderContacts = () =>
    replace(
      list,
      ...contacts.toArray().map((c) => {
        const phone = c.get('phone') ?? '';
        return h('li', {}, h('span', {}, c.get('name') ?? ''), ' ', h('a', { href: `tel:${phone.replace(/[^+\d]/g, '')}` }, `Call ${phone}`));
      }),
    );
  contacts.observeDeep(renderContacts);
  renderContacts();
  const name = h('input', { id: 'contact-name', autocomplete: 'off', required: true });
  const phone = h('input', { id: 'contact-phone', type: 'tel', autocomplete: 'off', required: true, pattern: '[+0-9 ()-]{3,20}' });
  const form = h(
    'form',
    {
      class: 'inline-form',
      onsubmit: (event: Event) => {
        event.preventDefault();
        if (!form.reportValidity()) return;
        const entry = new Y.Map<string>();
        entry.set('name', name.value.trim());
        entry.set('phone', phone.value.trim());
        contacts.push([entry]);
        name.value = '';
        phone.value = '';
      },
    },
    h('label', { for: 'contact-name' }, 'Name'),
    name,
    h('label', { for: 'contact-phone' }, 'Phone'),
    phone,
    h('button', { type: 'submit' }, 'Add contact'),
  );

  return section(
    'safety-plan',
    'Safety plan',
    h('p', { class: 'hint' }, 'Saved on this device first and shared with your other devices at once, on every plan. It opens without a network.'),
    ...fields,
    h('h3', {}, 'People I can call'),
    list,
    form,
  );
};
