import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ErrorCode, parseClientFrame, parseRelayFrame } from '@keel/engine';

const MAX = 1 << 20;
const codeOf = (data: string | Uint8Array) => {
  const r = parseClientFrame(data, MAX);
  return r.ok ? 'ok' : r.error.code;
};

describe('wire frames', () => {
  it('answers malformed frames with the right typed error', () => {
    expect(codeOf('{not json')).toBe(ErrorCode.BAD_JSON);
    expect(codeOf(new Uint8Array([1, 2, 3]))).toBe(ErrorCode.BINARY_FRAME);
    expect(codeOf('[]')).toBe(ErrorCode.SCHEMA);
    expect(codeOf('null')).toBe(ErrorCode.SCHEMA);
    expect(codeOf('{"type":42}')).toBe(ErrorCode.SCHEMA);
    expect(codeOf('{"type":"launch-missiles"}')).toBe(ErrorCode.UNKNOWN_TYPE);
    expect(codeOf('{"type":"hello","v":1,"user":"bob","device":"d"}')).toBe(ErrorCode.SCHEMA);
    expect(codeOf('{"type":"sub","docs":[]}')).toBe(ErrorCode.SCHEMA);
    expect(codeOf('{"type":"auth","sig":"AAAA","extra":1}')).toBe(ErrorCode.SCHEMA);
    expect(codeOf('x'.repeat(MAX + 1))).toBe(ErrorCode.FRAME_TOO_LARGE);
    // A relay frame type is not a client frame type.
    expect(codeOf('{"type":"ack","acks":[]}')).toBe(ErrorCode.UNKNOWN_TYPE);
  });

  it('carries an optional signup token in hello, of one exact shape', () => {
    const hello = (extra: string) =>
      `{"type":"hello","v":1,"user":"u_${'A'.repeat(43)}","device":"d_${'B'.repeat(22)}"${extra}}`;
    expect(codeOf(hello(''))).toBe('ok');
    expect(codeOf(hello(`,"signup":"kst_${'C'.repeat(43)}"`))).toBe('ok');
    expect(codeOf(hello(`,"signup":"kst_${'C'.repeat(42)}"`))).toBe(ErrorCode.SCHEMA);
    expect(codeOf(hello(`,"signup":"${'C'.repeat(47)}"`))).toBe(ErrorCode.SCHEMA);
    expect(codeOf(hello(`,"signup":"kst_${'C'.repeat(42)}!"`))).toBe(ErrorCode.SCHEMA);
  });

  it('names the failing field in schema errors', () => {
    const r = parseClientFrame('{"type":"sub","docs":[{"doc":"doc_x","after":-1}]}', MAX);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.message).toMatch(/docs\.0\.(doc|after)/);
  });

  it('never throws on arbitrary input (property)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), fc.uint8Array()), (input) => {
        const a = parseClientFrame(input, MAX);
        const b = parseRelayFrame(input, MAX);
        expect(typeof a.ok).toBe('boolean');
        expect(typeof b.ok).toBe('boolean');
      }),
      { seed: 3, numRuns: 1000 },
    );
  });
});
