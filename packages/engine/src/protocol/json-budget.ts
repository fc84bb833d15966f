import { ErrorCode, type Result, err, ok } from './codes.js';

/** How deep and how many-valued a JSON text may be before anything parses it. */
export interface JsonBudget {
  /** Deepest nesting of arrays and objects. */
  readonly maxDepth: number;
  /** Containers opened plus separators (`,`) seen: an upper bound of the values JSON.parse would allocate, give or take one per container. */
  readonly maxItems: number;
}

/**
 * What any relay → device frame of protocol v1 fits in, with room. The deepest frame is `ready`
 * (ready → epochs → record → wraps → wrap: 5 levels); the most items are in a full `ready`
 * (256 certificates, 256 revoked ones, 256 revocations and 64 epoch records of up to 257 wraps
 * each: about 60,000). An `updates` frame of 512 envelopes holds about 8,000.
 */
export const RELAY_FRAME_JSON_BUDGET: JsonBudget = { maxDepth: 10, maxItems: 100_000 };

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_OBJECT = 0x7b;
const OPEN_ARRAY = 0x5b;
const CLOSE_OBJECT = 0x7d;
const CLOSE_ARRAY = 0x5d;
const COMMA = 0x2c;

/**
 * Checks a JSON text against `budget` in one pass, before JSON.parse: a depth bomb
 * (`[[[[…`) or an array bomb (`[0,0,0,…`) costs one linear scan and no allocation, where
 * parsing it would allocate millions of values and a schema would then report an issue for
 * each. Strings are skipped with indexOf (their content is not structure). Malformed JSON may
 * pass; JSON.parse still refuses it. A string that never closes ends the scan (JSON.parse
 * refuses that text too).
 */
export const checkJsonBudget = (text: string, budget: JsonBudget): Result<void> => {
  let depth = 0;
  let items = 0;
  const length = text.length;
  for (let i = 0; i < length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      // Skip to the closing quote: one not preceded by an odd run of backslashes.
      for (;;) {
        const end = text.indexOf('"', i + 1);
        if (end < 0) return ok(undefined);
        let slashes = 0;
        while (text.charCodeAt(end - 1 - slashes) === BACKSLASH) slashes++;
        i = end;
        if (slashes % 2 === 0) break;
      }
    } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      if (++depth > budget.maxDepth) return err(ErrorCode.JSON_BUDGET, `frame nests deeper than ${budget.maxDepth} levels`);
      if (++items > budget.maxItems) return err(ErrorCode.JSON_BUDGET, `frame holds more than ${budget.maxItems} values`);
    } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      depth--;
    } else if (c === COMMA) {
      if (++items > budget.maxItems) return err(ErrorCode.JSON_BUDGET, `frame holds more than ${budget.maxItems} values`);
    }
  }
  return ok(undefined);
};
