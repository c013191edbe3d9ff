// Owner-only secret files (tokens, client secrets, key files): created 0600, never overwritten, fsynced.
import { closeSync, fstatSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';

/** Creates `path` holding `text`, readable by its owner only; refuses to overwrite; fsynced before it returns. */
export function writeSecretFile(path: string, text: string): void {
  const fd = openSync(path, 'wx', 0o600);
  try {
    writeSync(fd, `${text}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * The contents of a secret file written by writeSecretFile, or undefined if there is none. A file that others may
 * read (a restored backup, a copy, a chmod) is refused rather than used: its secret may already be someone else's.
 * The mode is read from the opened file, so a file swapped between the check and the read changes nothing.
 */
export function readSecretFile(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    if ((fstatSync(fd).mode & 0o077) !== 0)
      throw new Error(`${path} must be readable by its owner only (chmod 600); its secret may be known to others`);
    return readFileSync(fd, 'utf8').trim();
  } finally {
    closeSync(fd);
  }
}
