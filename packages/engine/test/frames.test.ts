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

describe('external crisis signals', () => {
  it('a signature binds the deployment, the user and the signal; a key that did not sign it, or any changed field, fails', async () => {
    const { cryptoReady, getSodium, signCrisisSignal, verifyCrisisSignal, CrisisSignalSchema } = await import('@keel/engine');
    await cryptoReady();
    const authority = getSodium().crypto_sign_keypair();
    const other = getSodium().crypto_sign_keypair();
    const statement = { relay: 'relay-a', user: 'u_someone', id: 'sig_0001', at: 1_790_000_000_000, reason: 'clinician' } as const;
    const sig = signCrisisSignal(statement as never, authority.privateKey);
    expect(verifyCrisisSignal(statement as never, sig, [other.publicKey, authority.publicKey])).toBe(true);
    expect(verifyCrisisSignal(statement as never, sig, [other.publicKey])).toBe(false);
    for (const changed of [{ relay: 'relay-b' }, { user: 'u_another' }, { id: 'sig_0002' }, { at: statement.at + 1 }, { reason: 'hotline' }]) {
      expect(verifyCrisisSignal({ ...statement, ...changed } as never, sig, [authority.publicKey]), JSON.stringify(changed)).toBe(false);
    }
    // The wire form: a fixed set of reasons, never free text.
    expect(CrisisSignalSchema.safeParse({ id: 'sig_0001', at: 1, reason: 'patient said something' }).success).toBe(false);
    expect(CrisisSignalSchema.safeParse({ id: 'short', at: 1, reason: 'other' }).success).toBe(false);
    expect(CrisisSignalSchema.safeParse({ id: 'sig_0001', at: 1, reason: 'other', sig }).success).toBe(true);
  });
});
