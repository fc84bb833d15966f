// Where the demo keeps this device's identity. A DEMO choice: localStorage is readable by any
// script on the origin. A real app keeps the serialized identity in the platform's secure
// storage (Keychain / Android Keystore, or at least a non-extractable WebCrypto key wrapping it
// in IndexedDB) — see the README's "Where to keep the identity".
import { type Identity, parseIdentity, serializeIdentity } from '@keel/client';

const KEY = 'keel-demo-identity';

export const loadIdentity = async (): Promise<Identity | undefined> => {
  const text = localStorage.getItem(KEY);
  if (!text) return undefined;
  try {
    return await parseIdentity(text);
  } catch {
    // A damaged entry is not an identity; onboarding starts again (the relay keeps the user's data).
    return undefined;
  }
};

export const saveIdentity = (identity: Identity): void => localStorage.setItem(KEY, serializeIdentity(identity));
export const forgetIdentity = (): void => localStorage.removeItem(KEY);
