import type * as Y from 'yjs';

/** The origin of edits this binding makes, so it does not echo them back into the field. */
const LOCAL = Symbol('text-binding');

/**
 * Binds a textarea or input to a Y.Text: each local edit becomes the minimal delete + insert
 * (common prefix and suffix kept), so two devices editing different parts both keep their words;
 * remote changes rewrite the field and keep the caret where it was relative to the text.
 */
export const bindText = (field: HTMLTextAreaElement | HTMLInputElement, text: Y.Text): (() => void) => {
  field.value = text.toString();
  const onInput = () => {
    const before = text.toString();
    const after = field.value;
    let start = 0;
    while (start < before.length && start < after.length && before[start] === after[start]) start++;
    let endBefore = before.length;
    let endAfter = after.length;
    while (endBefore > start && endAfter > start && before[endBefore - 1] === after[endAfter - 1]) {
      endBefore--;
      endAfter--;
    }
    text.doc?.transact(() => {
      if (endBefore > start) text.delete(start, endBefore - start);
      if (endAfter > start) text.insert(start, after.slice(start, endAfter));
    }, LOCAL);
  };
  const onRemote = (_event: Y.YTextEvent, transaction: Y.Transaction) => {
    if (transaction.origin === LOCAL) return;
    const focused = document.activeElement === field;
    const caret = field.selectionStart ?? 0;
    field.value = text.toString();
    if (focused) field.setSelectionRange(Math.min(caret, field.value.length), Math.min(caret, field.value.length));
  };
  field.addEventListener('input', onInput);
  text.observe(onRemote);
  return () => {
    field.removeEventListener('input', onInput);
    text.unobserve(onRemote);
  };
};
