import { randomBytes } from 'node:crypto';
import { type DocId, type Lane, deriveDocKey, fromB64, generateDeviceKeys, generateRootKey, deriveEpochZeroSecret, sealEnvelope } from '@keel/engine';
import * as Y from 'yjs';

/**
 * The size cost of padding (every envelope is padded since step 6): the same realistic edit mix
 * sealed with and without padding, compression off both times (as the client seals), counting
 * ciphertext bytes (what the relay stores and forwards; base64 on the wire adds 4/3 to both).
 */

export interface PaddingRow {
  readonly name: string;
  readonly updates: number;
  readonly plainBytes: number;
  readonly paddedBytes: number;
  /** The same envelopes as JSON on the wire (header, nonce, signature, base64): what a push or updates frame carries. */
  readonly plainWire: number;
  readonly paddedWire: number;
}

/** Every update a Y.Doc emits while `edit` runs, one per transaction (each would be its own envelope in realtime sync). */
const updatesOf = (edit: (doc: Y.Doc) => void): Uint8Array[] => {
  const doc = new Y.Doc();
  const updates: Uint8Array[] = [];
  doc.on('update', (u: Uint8Array) => updates.push(u));
  edit(doc);
  doc.destroy();
  return updates;
};

const words = 'I noticed my breath and let the thought pass then I called my sister and we walked to the park'.split(' ');
const sentence = (i: number, n: number) => Array.from({ length: n }, (_, k) => words[(i * 7 + k * 3) % words.length]).join(' ');

/** The mix: what a person does in a mental-health app over some days. */
const MIX: readonly { name: string; updates: () => Uint8Array[] }[] = [
  {
    name: 'check-in map edits (mood, sleep, short note) ×300',
    updates: () =>
      updatesOf((doc) => {
        const m = doc.getMap('checkin');
        for (let i = 0; i < 300; i++) doc.transact(() => (i % 3 === 0 ? m.set('mood', (i % 10) + 1) : i % 3 === 1 ? m.set('sleepHours', 4 + (i % 6)) : m.set('note', sentence(i, 3))));
      }),
  },
  {
    name: 'journal typing bursts (1–20 chars) ×500',
    updates: () =>
      updatesOf((doc) => {
        const t = doc.getText('journal');
        for (let i = 0; i < 500; i++) doc.transact(() => t.insert(t.length, `${sentence(i, 1 + (i % 4))} `.slice(0, 1 + (i % 20))));
      }),
  },
  {
    name: 'safety plan (created at once, then 20 edits)',
    updates: () =>
      updatesOf((doc) => {
        const plan = doc.getMap('plan');
        doc.transact(() => {
          for (const section of ['warningSigns', 'copingStrategies', 'peopleAndPlaces', 'contacts', 'professionals', 'safeEnvironment', 'reasonsForLiving']) {
            const list = new Y.Array<string>();
            list.push(Array.from({ length: 5 }, (_, i) => sentence(i + section.length, 6)));
            plan.set(section, list);
          }
          plan.set('crisisLine', '988');
        });
        for (let i = 0; i < 20; i++) doc.transact(() => (plan.get('copingStrategies') as Y.Array<string>).push([sentence(i, 5)]));
      }),
  },
  {
    name: 'a longer text pasted at once (a ~15 KB journal entry)',
    updates: () => updatesOf((doc) => doc.getText('entry').insert(0, Array.from({ length: 400 }, (_, i) => sentence(i, 8)).join('. '))),
  },
  {
    name: 'an attachment-like blob (60 KB of random bytes)',
    updates: () => updatesOf((doc) => doc.getMap('files').set('photo', new Uint8Array(randomBytes(60 * 1024)))),
  },
];

export const runPaddingBench = (): PaddingRow[] => {
  const device = generateDeviceKeys();
  const docId = 'doc_bench' as DocId;
  const key = deriveDocKey(deriveEpochZeroSecret(generateRootKey()), docId, 0);
  const seal = (payload: Uint8Array, counter: number, pad: boolean) =>
    sealEnvelope({ doc: docId, kind: 'update', epoch: 0, device: device.deviceId, counter, lane: 2 as Lane }, payload, { key, signingKey: device.secretKey, pad });
  return MIX.map(({ name, updates }) => {
    const list = updates();
    const row = { name, updates: list.length, plainBytes: 0, paddedBytes: 0, plainWire: 0, paddedWire: 0 };
    list.forEach((u, i) => {
      const plain = seal(u, i + 1, false);
      const padded = seal(u, i + 1, true);
      row.plainBytes += fromB64(plain.ct).length;
      row.paddedBytes += fromB64(padded.ct).length;
      row.plainWire += JSON.stringify(plain).length;
      row.paddedWire += JSON.stringify(padded).length;
    });
    return row;
  });
};

export const formatPaddingReport = (rows: readonly PaddingRow[]): string[] => {
  const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
  const ratio = (a: number, b: number) => `×${(b / a).toFixed(2)}`;
  const lines = rows.map(
    (r) =>
      `${r.name}: ${r.updates} envelopes; ciphertext ${kib(r.plainBytes)} → ${kib(r.paddedBytes)} (${ratio(r.plainBytes, r.paddedBytes)}); ` +
      `envelope JSON ${kib(r.plainWire)} → ${kib(r.paddedWire)} (${ratio(r.plainWire, r.paddedWire)})`,
  );
  const sum = (key: 'plainBytes' | 'paddedBytes' | 'plainWire' | 'paddedWire' | 'updates') => rows.reduce((n, r) => n + r[key], 0);
  lines.push(
    `whole mix: ${sum('updates')} envelopes; ciphertext ${kib(sum('plainBytes'))} → ${kib(sum('paddedBytes'))} (${ratio(sum('plainBytes'), sum('paddedBytes'))}); ` +
      `envelope JSON ${kib(sum('plainWire'))} → ${kib(sum('paddedWire'))} (${ratio(sum('plainWire'), sum('paddedWire'))})`,
  );
  return lines;
};
