/** A binary min-heap ordered by `before(a, b)` (true when `a` must come out first). */
export interface MinHeap<T> {
  push(item: T): void;
  peek(): T | undefined;
  pop(): T | undefined;
  clear(): void;
  readonly size: number;
}

export const createMinHeap = <T>(before: (a: T, b: T) => boolean): MinHeap<T> => {
  const items: T[] = [];

  const swap = (i: number, j: number): void => {
    const tmp = items[i] as T;
    items[i] = items[j] as T;
    items[j] = tmp;
  };

  const siftUp = (start: number): void => {
    let i = start;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(items[i] as T, items[parent] as T)) return;
      swap(i, parent);
      i = parent;
    }
  };

  const siftDown = (start: number): void => {
    let i = start;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let first = i;
      if (left < items.length && before(items[left] as T, items[first] as T)) first = left;
      if (right < items.length && before(items[right] as T, items[first] as T)) first = right;
      if (first === i) return;
      swap(i, first);
      i = first;
    }
  };

  return {
    push(item) {
      items.push(item);
      siftUp(items.length - 1);
    },
    peek: () => items[0],
    pop() {
      const top = items[0];
      const last = items.pop();
      if (items.length > 0 && last !== undefined) {
        items[0] = last;
        siftDown(0);
      }
      return top;
    },
    clear() {
      items.length = 0;
    },
    get size() {
      return items.length;
    },
  };
};
