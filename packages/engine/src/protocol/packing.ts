/**
 * Splits `items`, in order, into groups of at most `maxItems` items and at most `maxChars`
 * characters by `charsOf`; an item larger than `maxChars` alone still gets a group of its own.
 * How both ends cut envelopes into frames: the device its pushes (under the relay's frame
 * limit), the relay its `updates` (small enough for a crisis frame to overtake them).
 */
export const packByChars = <T>(items: readonly T[], charsOf: (item: T) => number, maxItems: number, maxChars: number): T[][] => {
  const groups: T[][] = [];
  let current: T[] = [];
  let chars = 0;
  for (const item of items) {
    const size = charsOf(item);
    if (current.length > 0 && (current.length >= maxItems || chars + size > maxChars)) {
      groups.push(current);
      current = [];
      chars = 0;
    }
    current.push(item);
    chars += size;
  }
  if (current.length > 0) groups.push(current);
  return groups;
};
