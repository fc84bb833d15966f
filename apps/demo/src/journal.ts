import { baseKeymap, toggleMark } from 'prosemirror-commands';
import { keymap } from 'prosemirror-keymap';
import { schema } from 'prosemirror-schema-basic';
import { EditorState } from 'prosemirror-state';
import { EditorView } from 'prosemirror-view';
import { yCursorPlugin, ySyncPlugin, yUndoPlugin, redo, undo } from 'y-prosemirror';
import * as Y from 'yjs';
import { h, replace, section } from './dom.js';
import type { DemoClient } from './keel-api.js';

const JOURNAL = { class: 'therapeutic_session', name: 'journal' } as const;
/** Attachments are a separate, background document: a large file never slows the journal's text. */
const ATTACHMENTS = { class: 'history', name: 'journal-attachments' } as const;
const COLORS = ['#1f6f8b', '#8b3a1f', '#3b7d2f', '#6b3a8b', '#8b6f1f'];

const hex = (bytes: ArrayBuffer) => [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, '0')).join('');
const size = (n: number) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${Math.ceil(n / 1024)} KiB`);

/**
 * The shared journal: ProseMirror bound to a Y.XmlFragment with y-prosemirror through the
 * provider handle; the other device's cursor shows through `provider.awareness`.
 */
export const renderJournal = async (client: DemoClient, deviceLabel: string): Promise<HTMLElement> => {
  const provider = await client.provider(JOURNAL);
  const doc = provider.doc;
  const fragment = doc.getXmlFragment('prosemirror');
  const plugins = [
    ySyncPlugin(fragment),
    yCursorPlugin(provider.awareness),
    yUndoPlugin(),
    keymap({ 'Mod-z': undo, 'Mod-y': redo, 'Mod-Shift-z': redo, 'Mod-b': toggleMark(schema.marks.strong), 'Mod-i': toggleMark(schema.marks.em) }),
    keymap(baseKeymap),
  ];
  const color = COLORS[[...deviceLabel].reduce((n, c) => n + c.charCodeAt(0), 0) % COLORS.length]!;
  provider.awareness.setLocalStateField('user', { name: deviceLabel, color });
  const mount = h('div', { class: 'journal-editor', 'data-testid': 'journal' });
  // The view lives as long as the page; y-prosemirror keeps it and the Y.XmlFragment in step.
  new EditorView(mount, {
    state: EditorState.create({ schema, plugins }),
    attributes: { 'aria-label': 'Journal', 'aria-multiline': 'true', role: 'textbox', class: 'prose' },
  });
  const cursors = h('p', { class: 'hint', 'data-testid': 'journal-cursors' });
  // Presence follows the tier: on trial nothing crosses devices, cursors included.
  cursors.textContent = 'Your other devices’ cursors appear in the text while they write (not on trial, where nothing crosses devices).';

  // ── attachments ──
  const attachmentsDoc = await client.open(ATTACHMENTS);
  const files = attachmentsDoc.getMap<Y.Map<unknown>>('files');
  const list = h('ul', { class: 'attachments', 'data-testid': 'attachments' });
  const render = () =>
    replace(
      list,
      ...[...files.entries()].map(([id, f]) =>
        h('li', { 'data-id': id, 'data-sha256': String(f.get('sha256')), 'data-size': String(f.get('size')) }, `${String(f.get('name'))} (${size(Number(f.get('size')))})`),
      ),
    );
  files.observeDeep(render);
  render();
  const input = h('input', { type: 'file', id: 'journal-attach', 'data-testid': 'journal-attach' });
  const status = h('p', { class: 'hint', role: 'status' });
  input.addEventListener('change', async () => {
    const file = input.files?.[0];
    if (!file) return;
    const bytes = new Uint8Array(await file.arrayBuffer());
    const limit = client.tier.policy.maxSyncBytes;
    if (limit !== null && bytes.length > limit) status.textContent = `This file is larger than your plan syncs at once (${size(limit)}); it stays on this device.`;
    const entry = new Y.Map<unknown>();
    entry.set('name', file.name.slice(0, 200));
    entry.set('size', bytes.length);
    entry.set('sha256', hex(await crypto.subtle.digest('SHA-256', bytes)));
    entry.set('bytes', bytes);
    files.set(crypto.randomUUID(), entry);
    input.value = '';
  });

  return section(
    'journal',
    'Journal',
    h('p', { class: 'hint' }, 'A rich-text journal shared between your devices (Ctrl-B bold, Ctrl-I italic).'),
    mount,
    cursors,
    h('h3', {}, 'Attachments'),
    h('label', { for: 'journal-attach' }, 'Attach a file'),
    input,
    status,
    list,
  );
};
