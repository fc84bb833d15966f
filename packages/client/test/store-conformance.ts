import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ClientStore, StorageChunk, StorageKey, StorageOp } from '../src/storage/client-store.js';

/** What a store implementation hands the suite for one test. */
export interface ClientStoreHarness {
  readonly store: ClientStore;
  /**
   * Opens the same durable state again after the suite closed `store`. Omit for volatile
   * stores (the persistence test is then skipped).
   */
  readonly reopen?: () => Promise<ClientStore>;
  /** Removes whatever `open` created. Runs after the suite closed every store it was handed. */
  readonly cleanup: () => Promise<void>;
}

const bytes = (...values: number[]): Uint8Array => new Uint8Array(values);
const text = (s: string): Uint8Array => new TextEncoder().encode(s);
/** Hex, so byte comparisons fail with a readable diff and never depend on Buffer vs Uint8Array. */
const hex = (b: Uint8Array | undefined): string | undefined => (b === undefined ? undefined : Buffer.from(b).toString('hex'));
const listing = (chunks: readonly StorageChunk[]): [string[], string | undefined][] => chunks.map((c) => [[...c.key], hex(c.data)]);

/** Reference order of keys: segment by segment, a shorter key before its extensions. */
const compareKeys = (a: StorageKey, b: StorageKey): number => {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x !== y) return x < y ? -1 : 1;
  }
  return a.length - b.length;
};
/** Strictly below: the key extends the prefix by at least one segment. */
const isUnder = (key: StorageKey, prefix: StorageKey): boolean =>
  key.length > prefix.length && prefix.every((segment, i) => key[i] === segment);

const BAD_SEGMENT = 'bad\u001fsegment';

/**
 * The behaviour every ClientStore must share (memory, SQLite, IndexedDB). `open` is called once
 * per test and must return an empty store.
 */
/**
 * `volatile`: the store keeps nothing across close (memory); the persistence test is not run.
 */
export const runClientStoreConformance = (name: string, open: () => Promise<ClientStoreHarness>, options: { volatile?: boolean } = {}): void => {
  describe(`ClientStore conformance: ${name}`, () => {
    let harness: ClientStoreHarness | undefined;
    let live: ClientStore | undefined;

    beforeEach(async () => {
      harness = await open();
      live = harness.store;
    });

    afterEach(async () => {
      try {
        await live?.close();
      } finally {
        live = undefined;
        await harness?.cleanup();
        harness = undefined;
      }
    });

    const store = (): ClientStore => {
      if (!live) throw new Error('no open store');
      return live;
    };

    it('saves, overwrites, loads and removes single keys', async () => {
      const key = ['docs', 'doc_1', 'meta'];
      expect(await store().load(key)).toBeUndefined();
      await store().save(key, text('first'));
      expect(hex(await store().load(key))).toBe(hex(text('first')));
      await store().save(key, text('second, longer'));
      expect(hex(await store().load(key))).toBe(hex(text('second, longer')));
      // Neighbouring keys are distinct entries.
      expect(await store().load(['docs', 'doc_1'])).toBeUndefined();
      expect(await store().load(['docs', 'doc_1', 'meta', 'x'])).toBeUndefined();

      await store().remove(key);
      expect(await store().load(key)).toBeUndefined();
      await expect(store().remove(key)).resolves.toBeUndefined();
    });

    it('stores empty values, empty segments and any bytes faithfully', async () => {
      const all = bytes(...Array.from({ length: 256 }, (_, i) => i));
      await store().save(['empty'], new Uint8Array(0));
      await store().save(['a', '', 'b'], bytes(1));
      await store().save(['a', 'b'], bytes(2));
      await store().save(['bytes', 'ünïcødé 🔑'], all);
      const empty = await store().load(['empty']);
      expect(empty).toBeInstanceOf(Uint8Array);
      expect(empty?.length).toBe(0);
      expect(hex(await store().load(['a', '', 'b']))).toBe('01');
      expect(hex(await store().load(['a', 'b']))).toBe('02');
      expect(hex(await store().load(['bytes', 'ünïcødé 🔑']))).toBe(hex(all));
    });

    it('refuses keys with a U+001F segment without storing anything', async () => {
      await expect(store().save(['ok', BAD_SEGMENT], bytes(1))).rejects.toThrow();
      await expect(store().load([BAD_SEGMENT])).rejects.toThrow();
      expect(await store().loadRange([])).toEqual([]);
    });

    it('loads exactly the keys under a prefix, in key order', async () => {
      const keys: StorageKey[] = [
        ['b', '2'],
        ['a', 'z'],
        ['ab', '1'],
        ['a'],
        ['a', 'b', 'c'],
        ['a', '0000000000000010'],
        ['a', '0000000000000002'],
        ['a!', 'x'],
        ['a', 'b'],
        ['b'],
      ];
      for (const [i, key] of keys.entries()) await store().save(key, bytes(i));
      const expectedUnder = (prefix: StorageKey) =>
        keys
          .map((key, i): [string[], string | undefined] => [[...key], hex(bytes(i))])
          .filter(([key]) => prefix.length === 0 || isUnder(key, prefix))
          .sort(([x], [y]) => compareKeys(x, y));

      expect(listing(await store().loadRange(['a']))).toEqual(expectedUnder(['a']));
      expect(listing(await store().loadRange(['a'])).map(([k]) => k)).toEqual([
        ['a', '0000000000000002'],
        ['a', '0000000000000010'],
        ['a', 'b'],
        ['a', 'b', 'c'],
        ['a', 'z'],
      ]);
      expect(listing(await store().loadRange(['a', 'b']))).toEqual([[['a', 'b', 'c'], hex(bytes(4))]]);
      expect(await store().loadRange(['a', 'b', 'c'])).toEqual([]);
      expect(await store().loadRange(['c'])).toEqual([]);
      // The empty prefix is everything.
      expect(listing(await store().loadRange([]))).toEqual(expectedUnder([]));
      expect(await store().loadRange([])).toHaveLength(keys.length);
    });

    it('ranges over keys of any characters, including U+FFFF and beyond the BMP', async () => {
      // Only membership is checked: how such keys sort relative to each other is not pinned.
      const keys: StorageKey[] = [['\uffff'], ['🔑'], ['\ue000', 'x'], ['a', '🔑'], ['a', '\uffff'], ['a', 'plain']];
      for (const key of keys) await store().save(key, bytes(1));
      const ids = (chunks: readonly StorageChunk[]) => chunks.map((c) => JSON.stringify(c.key)).sort();
      expect(ids(await store().loadRange([]))).toEqual(keys.map((k) => JSON.stringify(k)).sort());
      expect(ids(await store().loadRange(['a']))).toEqual([['a', '🔑'], ['a', '\uffff'], ['a', 'plain']].map((k) => JSON.stringify(k)).sort());
      expect(ids(await store().loadRange(['🔑']))).toEqual([]);
      await store().removeRange(['a']);
      await store().removeRange(['\ue000']);
      expect(ids(await store().loadRange([]))).toEqual([['\uffff'], ['🔑']].map((k) => JSON.stringify(k)).sort());
      await store().removeRange([]);
      expect(await store().loadRange([])).toEqual([]);
    });

    it('removes exactly the keys under a prefix', async () => {
      const keys: StorageKey[] = [['a'], ['a', '1'], ['a', '2', 'x'], ['ab'], ['ab', '1'], ['b', '1']];
      for (const key of keys) await store().save(key, bytes(7));
      await store().removeRange(['a']);
      expect(listing(await store().loadRange([])).map(([k]) => k)).toEqual([['a'], ['ab'], ['ab', '1'], ['b', '1']]);
      await store().removeRange(['nothing', 'here']);
      expect(await store().loadRange([])).toHaveLength(4);
      await store().removeRange([]);
      expect(await store().loadRange([])).toEqual([]);
      expect(await store().load(['ab'])).toBeUndefined();
    });

    it('applies every operation of a batch, in order', async () => {
      await store().save(['keep'], text('kept'));
      await store().save(['drop'], text('dropped'));
      await store().batch([
        { op: 'save', key: ['outbox', 'doc', '1'], data: text('one') },
        { op: 'save', key: ['outbox', 'doc', '2'], data: text('two') },
        { op: 'remove', key: ['outbox', 'doc', '1'] },
        { op: 'remove', key: ['drop'] },
        { op: 'save', key: ['counter'], data: text('first') },
        { op: 'save', key: ['counter'], data: text('last') },
        { op: 'remove', key: ['never', 'saved'] },
      ]);
      expect(listing(await store().loadRange([]))).toEqual([
        [['counter'], hex(text('last'))],
        [['keep'], hex(text('kept'))],
        [['outbox', 'doc', '2'], hex(text('two'))],
      ]);
      await expect(store().batch([])).resolves.toBeUndefined();
    });

    it('applies nothing of a batch that holds an invalid key, wherever it is', async () => {
      await store().save(['meta'], text('old'));
      await store().save(['outbox', 'doc', '1'], text('pending'));
      const before = listing(await store().loadRange([]));
      const good: StorageOp[] = [
        { op: 'save', key: ['meta'], data: text('new') },
        { op: 'remove', key: ['outbox', 'doc', '1'] },
        { op: 'save', key: ['outbox', 'doc', '2'], data: text('next') },
      ];
      const bad: StorageOp[] = [
        { op: 'save', key: ['outbox', BAD_SEGMENT], data: text('x') },
        { op: 'remove', key: [BAD_SEGMENT] },
      ];
      for (const invalid of bad) {
        for (let at = 0; at <= good.length; at++) {
          const ops = [...good.slice(0, at), invalid, ...good.slice(at)];
          await expect(store().batch(ops)).rejects.toThrow();
          expect(listing(await store().loadRange([]))).toEqual(before);
        }
      }
      // The store still works after the refused batches.
      await store().batch(good);
      expect(hex(await store().load(['meta']))).toBe(hex(text('new')));
      expect(await store().load(['outbox', 'doc', '1'])).toBeUndefined();
    });

    it('hands out copies: mutating bytes passed in or returned never changes the store', async () => {
      const saved = bytes(1, 2, 3);
      await store().save(['k', 'save'], saved);
      saved[0] = 99;
      const batched = bytes(4, 5, 6);
      await store().batch([{ op: 'save', key: ['k', 'batch'], data: batched }]);
      batched[0] = 99;

      const loaded = await store().load(['k', 'save']);
      loaded?.fill(0);
      const ranged = await store().loadRange(['k']);
      for (const chunk of ranged) chunk.data.fill(0);

      expect(hex(await store().load(['k', 'save']))).toBe('010203');
      expect(hex(await store().load(['k', 'batch']))).toBe('040506');
      expect(listing(await store().loadRange(['k']))).toEqual([
        [['k', 'batch'], '040506'],
        [['k', 'save'], '010203'],
      ]);
    });

    it('matches a simple map model under random operations (property)', async () => {
      const segment = fc.constantFrom('a', 'b', 'ab', '0', '1', '');
      const key = fc.array(segment, { minLength: 1, maxLength: 3 });
      const prefix = fc.array(segment, { maxLength: 2 });
      type Step =
        | { readonly op: 'save'; readonly key: string[]; readonly value: number }
        | { readonly op: 'remove'; readonly key: string[] }
        | { readonly op: 'removeRange'; readonly prefix: string[] }
        | { readonly op: 'batch'; readonly ops: { readonly key: string[]; readonly value: number | null }[] };
      const step: fc.Arbitrary<Step> = fc.oneof(
        { weight: 4, arbitrary: fc.record({ op: fc.constant('save' as const), key, value: fc.nat(255) }) },
        { weight: 2, arbitrary: fc.record({ op: fc.constant('remove' as const), key }) },
        { weight: 1, arbitrary: fc.record({ op: fc.constant('removeRange' as const), prefix }) },
        {
          weight: 2,
          arbitrary: fc.record({
            op: fc.constant('batch' as const),
            ops: fc.array(fc.record({ key, value: fc.option(fc.nat(255)) }), { maxLength: 4 }),
          }),
        },
      );

      await fc.assert(
        fc.asyncProperty(fc.array(step, { maxLength: 12 }), fc.array(prefix, { minLength: 1, maxLength: 3 }), async (steps, probes) => {
          await store().removeRange([]);
          const model = new Map<string, { key: string[]; value: number }>();
          const id = (k: readonly string[]) => JSON.stringify(k);
          for (const s of steps) {
            switch (s.op) {
              case 'save':
                await store().save(s.key, bytes(s.value));
                model.set(id(s.key), { key: s.key, value: s.value });
                break;
              case 'remove':
                await store().remove(s.key);
                model.delete(id(s.key));
                break;
              case 'removeRange':
                await store().removeRange(s.prefix);
                for (const [k, entry] of model) if (s.prefix.length === 0 || isUnder(entry.key, s.prefix)) model.delete(k);
                break;
              case 'batch':
                await store().batch(
                  s.ops.map((o): StorageOp => (o.value === null ? { op: 'remove', key: o.key } : { op: 'save', key: o.key, data: bytes(o.value) })),
                );
                for (const o of s.ops) {
                  if (o.value === null) model.delete(id(o.key));
                  else model.set(id(o.key), { key: o.key, value: o.value });
                }
                break;
            }
          }
          for (const p of [[], ...probes]) {
            const expected = [...model.values()]
              .filter((e) => p.length === 0 || isUnder(e.key, p))
              .sort((x, y) => compareKeys(x.key, y.key))
              .map((e): [string[], string | undefined] => [e.key, hex(bytes(e.value))]);
            expect(listing(await store().loadRange(p))).toEqual(expected);
          }
          for (const entry of model.values()) expect(hex(await store().load(entry.key))).toBe(hex(bytes(entry.value)));
        }),
        { seed: 1337, numRuns: 40 },
      );
    });

    // A volatile store keeps nothing across close: the test is not registered for it.
    if (!options.volatile) {
      it('keeps everything across close and reopen', async () => {
        const reopen = harness?.reopen;
        if (!reopen) throw new Error(`${name} is not volatile but its harness cannot reopen the store`);
        await store().save(['docs', 'd1', 'meta'], text('meta'));
        await store().batch([
          { op: 'save', key: ['outbox', 'd1', '0000000000000001'], data: bytes(1) },
          { op: 'save', key: ['outbox', 'd1', '0000000000000002'], data: bytes(2) },
          { op: 'save', key: ['gone'], data: bytes(3) },
          { op: 'remove', key: ['gone'] },
        ]);
        const before = listing(await store().loadRange([]));
        expect(before).toHaveLength(3);

        const first = store();
        live = undefined;
        await first.close();
        live = await reopen();

        expect(listing(await store().loadRange([]))).toEqual(before);
        expect(hex(await store().load(['docs', 'd1', 'meta']))).toBe(hex(text('meta')));
        expect(await store().load(['gone'])).toBeUndefined();
      });
    }
  });
};
