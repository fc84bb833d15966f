import { type Identity, createIdentity, joinWithPairingCode } from '@keel/client';
import { h, replace, section } from './dom.js';

/**
 * First run: make a new user (the recovery words are shown once, here, and never stored), or
 * link this device to an existing user with a pairing code from one of their devices.
 */
export const renderOnboarding = (root: HTMLElement, relayUrl: string, done: (identity: Identity) => void): void => {
  const createButton = h('button', { type: 'button', 'data-testid': 'create-user' }, 'Start on this device');
  const createArea = h('div', {});
  createButton.addEventListener('click', async () => {
    createButton.disabled = true;
    const identity = await createIdentity();
    const words = identity.recovery?.phrase.split(' ') ?? [];
    const understood = h('input', { type: 'checkbox', id: 'words-saved', 'data-testid': 'words-saved' });
    const next = h('button', { type: 'button', disabled: true, 'data-testid': 'words-continue' }, 'Continue');
    understood.addEventListener('change', () => (next.disabled = !understood.checked));
    next.addEventListener('click', () => done(identity));
    replace(
      createArea,
      h('h3', {}, 'Your recovery words'),
      h('p', {}, 'Write these 12 words down and keep them somewhere safe, away from this device. They are shown only now. With them you can take your data back if a device is lost or stolen.'),
      h('ol', { class: 'words', 'data-testid': 'recovery-words' }, ...words.map((w) => h('li', {}, w))),
      h('p', {}, understood, ' ', h('label', { for: 'words-saved' }, 'I have written them down')),
      next,
    );
  });

  const codeInput = h('input', { id: 'pair-code-input', autocomplete: 'off', spellcheck: 'false', required: true, 'data-testid': 'pair-code-input' });
  const linkStatus = h('p', { role: 'status', class: 'hint' });
  const linkForm = h(
    'form',
    {
      class: 'inline-form',
      onsubmit: async (event: Event) => {
        event.preventDefault();
        linkStatus.textContent = 'Linking…';
        try {
          done(await joinWithPairingCode({ url: relayUrl, code: codeInput.value.trim(), timeoutMs: 30_000 }));
        } catch (error) {
          linkStatus.textContent = `Could not link: ${error instanceof Error ? error.message : String(error)}`;
        }
      },
    },
    h('label', { for: 'pair-code-input' }, 'Pairing code'),
    codeInput,
    h('button', { type: 'submit', 'data-testid': 'pair-join' }, 'Link this device'),
  );

  replace(
    root,
    section(
      'welcome',
      'Welcome to the Keel demo',
      h('p', {}, 'Keel keeps your safety plan, check-ins and journal on your devices, end-to-end encrypted; the relay only ever sees ciphertext.'),
      h(
        'p',
        { class: 'hint' },
        'New users start on the free trial plan: crisis data (safety plan, crisis contacts, crisis mode) syncs at once to every device, other data is backed up every 30 s and not shared between devices. The dev relay lets you switch plans from the page once you are in.',
      ),
      h('h3', {}, 'New here'),
      createButton,
      createArea,
      h('h3', {}, 'Already use Keel on another device'),
      h('p', { class: 'hint' }, 'On that device open “Devices and sync”, choose “Link a new device”, and enter the code here.'),
      linkForm,
      linkStatus,
    ),
  );
};
