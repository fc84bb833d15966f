import sodium from 'libsodium-wrappers';

export type Sodium = typeof sodium;

let loaded: Sodium | undefined;

/** Loads libsodium's WebAssembly once. Every crypto function here needs it finished first. */
export const cryptoReady = async (): Promise<Sodium> => {
  if (!loaded) {
    await sodium.ready;
    loaded = sodium;
  }
  return loaded;
};

/** libsodium, for code that runs after `cryptoReady()` resolved. Throws (a bug) otherwise. */
export const getSodium = (): Sodium => {
  if (!loaded) throw new Error('libsodium is not loaded: await cryptoReady() before using Keel crypto');
  return loaded;
};
