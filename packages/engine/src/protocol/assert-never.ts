/**
 * The end of an exhaustive switch: the compiler proves it unreachable (`value` is `never`), so a
 * new frame type or variant fails to compile until every switch handles it; at run time, should
 * an unchecked value ever get here, it throws instead of passing silently.
 */
export const assertNever = (value: never, what = 'value'): never => {
  throw new Error(`unhandled ${what}: ${JSON.stringify(value)?.slice(0, 200)}`);
};
