import { describe, expect, it } from 'vitest';
import { RelayConfigSchema } from '../src/config.js';
import { canonicalIp, clientAddress } from '../src/server/client-address.js';

const req = (remoteAddress: string | undefined, forwardedFor?: string | string[]) => ({
  socket: { remoteAddress },
  headers: forwardedFor === undefined ? {} : { 'x-forwarded-for': forwardedFor },
});

describe('canonicalIp', () => {
  it('spells each address one way, so a configured proxy matches what the socket reports', () => {
    expect(canonicalIp('127.0.0.1')).toBe('127.0.0.1');
    expect(canonicalIp('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(canonicalIp('2001:DB8:0:0:0:0:0:1')).toBe('2001:db8::1');
    expect(canonicalIp('::1')).toBe('::1');
  });

  it('is undefined for anything that is not one IP literal', () => {
    for (const value of [undefined, '', 'localhost', '10.0.0.0/8', '127.0.0.1,127.0.0.2', '1.2.3', '::ffff:999.1.1.1', ' 127.0.0.1']) {
      expect(canonicalIp(value), String(value)).toBeUndefined();
    }
  });
});

describe('clientAddress', () => {
  it('is the socket peer without a trusted proxy, whatever the header says', () => {
    expect(clientAddress(req('127.0.0.1', '203.0.113.7'), undefined)).toBe('127.0.0.1');
    expect(clientAddress(req('198.51.100.1', '203.0.113.7'), '127.0.0.1')).toBe('198.51.100.1');
  });

  it('from the trusted proxy is the last X-Forwarded-For entry, the one the proxy wrote', () => {
    expect(clientAddress(req('127.0.0.1', '203.0.113.7'), '127.0.0.1')).toBe('203.0.113.7');
    expect(clientAddress(req('::ffff:127.0.0.1', '6.6.6.6, 203.0.113.7'), '127.0.0.1')).toBe('203.0.113.7');
    expect(clientAddress(req('127.0.0.1', ['6.6.6.6', '2001:DB8::1']), '127.0.0.1')).toBe('2001:db8::1');
    expect(clientAddress(req('::1', '203.0.113.7'), '::1')).toBe('203.0.113.7');
  });

  it('from the trusted proxy without a usable header counts against the proxy, never a guess', () => {
    expect(clientAddress(req('127.0.0.1'), '127.0.0.1')).toBe('127.0.0.1');
    expect(clientAddress(req('127.0.0.1', 'unknown'), '127.0.0.1')).toBe('127.0.0.1');
    expect(clientAddress(req('127.0.0.1', '203.0.113.7, '), '127.0.0.1')).toBe('127.0.0.1');
  });
});

describe('TLS and proxy settings', () => {
  const issues = (input: Record<string, unknown>) => {
    const parsed = RelayConfigSchema.safeParse(input);
    return parsed.success ? [] : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
  };

  it('need both a certificate and a key, each a readable file', () => {
    // This test file itself is a readable file; the schema checks readability, the relay checks PEM.
    const readable = new URL(import.meta.url).pathname;
    expect(issues({ tlsCert: readable })).toEqual(['tlsKey: TLS needs both a certificate and its key (or neither, for plain ws:// behind a proxy)']);
    expect(issues({ tlsKey: readable })).toEqual(['tlsCert: TLS needs both a certificate and its key (or neither, for plain ws:// behind a proxy)']);
    expect(issues({ tlsCert: readable, tlsKey: '/nonexistent/key.pem' })).toEqual(['tlsKey: TLS key "/nonexistent/key.pem" is not a readable file']);
    expect(issues({ tlsCert: '/tmp', tlsKey: readable })).toEqual(['tlsCert: TLS certificate "/tmp" is not a readable file']);
    expect(issues({ tlsCert: readable, tlsKey: readable })).toEqual([]);
  });

  it('take one trusted proxy address, stored in its canonical spelling', () => {
    expect(RelayConfigSchema.parse({ trustedProxy: '::ffff:127.0.0.1' }).trustedProxy).toBe('127.0.0.1');
    expect(RelayConfigSchema.parse({}).trustedProxy).toBeUndefined();
    expect(issues({ trustedProxy: 'proxy.local' })).toEqual(['trustedProxy: trusted proxy must be one IPv4 or IPv6 address (no names, no ranges)']);
  });
});
