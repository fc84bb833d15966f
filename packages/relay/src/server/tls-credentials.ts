import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type SecureContextOptions, createSecureContext } from 'node:tls';

/** A certificate chain and its private key, PEM, as read at start (or on reload). */
export interface TlsCredentials {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** When the leaf certificate expires (ms since the epoch), for the log. */
  readonly validTo: number;
}

export type TlsLoad = { readonly ok: true; readonly credentials: TlsCredentials } | { readonly ok: false; readonly message: string };

const reason = (error: unknown): string => (error instanceof Error ? error.message : String(error)).slice(0, 200);

/**
 * Reads and checks a certificate and key: both parse, and the key is the certificate's (OpenSSL
 * says so when building a context). Checked before listening, so a wrong file is a start-up
 * error naming the file, not a handshake failure every device reports later.
 */
export const readTlsCredentials = (certPath: string, keyPath: string): TlsLoad => {
  let cert: Buffer;
  let key: Buffer;
  try {
    cert = readFileSync(certPath);
  } catch (error) {
    return { ok: false, message: `cannot read TLS certificate ${certPath}: ${reason(error)}` };
  }
  try {
    key = readFileSync(keyPath);
  } catch (error) {
    return { ok: false, message: `cannot read TLS key ${keyPath}: ${reason(error)}` };
  }
  let validTo: number;
  try {
    validTo = Date.parse(new X509Certificate(cert).validTo);
  } catch (error) {
    return { ok: false, message: `TLS certificate ${certPath} is not a PEM certificate: ${reason(error)}` };
  }
  try {
    createSecureContext({ cert, key });
  } catch (error) {
    return { ok: false, message: `TLS key ${keyPath} does not fit certificate ${certPath} (or is not a PEM key): ${reason(error)}` };
  }
  return { ok: true, credentials: { cert, key, validTo } };
};

/** The secure-context options the relay serves with: these credentials, TLS 1.2 at least. */
export const secureContextOptions = (credentials: TlsCredentials): SecureContextOptions => ({
  cert: credentials.cert,
  key: credentials.key,
  minVersion: 'TLSv1.2',
});
