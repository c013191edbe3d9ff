// Owner-only secret files (tokens, client secrets, key files): created 0600, never overwritten, fsynced.
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';

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

/** The contents of a secret file written by writeSecretFile, or undefined if there is none. */
export function readSecretFile(path: string): string | undefined {
  return existsSync(path) ? readFileSync(path, 'utf8').trim() : undefined;
}
