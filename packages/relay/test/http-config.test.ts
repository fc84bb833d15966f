import { createServer } from 'node:http';
import { describe, expect, it } from 'vitest';
import { RelayConfigSchema } from '../src/config.js';

const issues = (input: Record<string, unknown>) => {
  const parsed = RelayConfigSchema.safeParse(input);
  return parsed.success ? [] : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
};

describe('HTTP timeout settings', () => {
  it('default to 10 s for headers, 30 s for a whole request and 10 s for a body', () => {
    expect(RelayConfigSchema.parse({})).toMatchObject({ httpHeadersTimeoutMs: 10_000, httpRequestTimeoutMs: 30_000, httpBodyTimeoutMs: 10_000 });
    const fromEnv = RelayConfigSchema.parse({ httpHeadersTimeoutMs: '500', httpRequestTimeoutMs: '1000', httpBodyTimeoutMs: '700' });
    expect([fromEnv.httpHeadersTimeoutMs, fromEnv.httpRequestTimeoutMs, fromEnv.httpBodyTimeoutMs]).toEqual([500, 1000, 700]);
  });

  it('refuses 0 (Node: never time out) and combinations Node refuses or that could never fire, naming the setting', () => {
    expect(issues({ httpHeadersTimeoutMs: '0' })).toEqual(['httpHeadersTimeoutMs: HTTP headers timeout must be between 100 and 600000']);
    expect(issues({ httpRequestTimeoutMs: '5000' })).toEqual([
      'httpHeadersTimeoutMs: HTTP headers timeout (10000 ms) must not be longer than the request timeout (5000 ms), which includes the headers',
      'httpBodyTimeoutMs: HTTP body timeout (10000 ms) must not be longer than the request timeout (5000 ms), which includes the body',
    ]);
    expect(issues({ httpRequestTimeoutMs: '5000', httpHeadersTimeoutMs: '5000', httpBodyTimeoutMs: '4000' })).toEqual([]);
  });

  it('matches Node 20: headers timeout equal to the request timeout starts a server, one above it is what Node refuses', () => {
    const valid = RelayConfigSchema.parse({ httpHeadersTimeoutMs: '5000', httpRequestTimeoutMs: '5000', httpBodyTimeoutMs: '5000' });
    expect(() => createServer({ headersTimeout: valid.httpHeadersTimeoutMs, requestTimeout: valid.httpRequestTimeoutMs }).close()).not.toThrow();
    expect(() => createServer({ headersTimeout: 5001, requestTimeout: 5000 })).toThrow(/headersTimeout/);
  });
});
