import { chmodSync, closeSync, fsyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { CommandFailed } from './command.js';

/**
 * A new file only its owner can read (0600 whatever the umask), written with `write` and
 * fsync'd; never over an existing file, and removed again if writing fails half-way, so a cut
 * export is never left looking like a whole one.
 */
export const writePrivateFile = async <T>(path: string, fill: (write: (text: string) => void) => Promise<T>): Promise<T> => {
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new CommandFailed(code === 'EEXIST' ? `${path} exists; give a new file` : `cannot create ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  try {
    chmodSync(path, 0o600);
    const result = await fill((text) => {
      writeSync(fd, text);
    });
    fsyncSync(fd);
    return result;
  } catch (error) {
    closeSync(fd);
    fd = -1;
    rmSync(path, { force: true });
    throw error;
  } finally {
    if (fd !== -1) closeSync(fd);
  }
};
