// The I/O a CLI command writes to; tests pass a recorder, `qkey` passes the process streams.
import { deviceIdProblem } from '../protocol/index.js';

export interface CliIo {
  out(line: string): void;
  err(line: string): void;
}

export const processIo: CliIo = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
};

/** A usage mistake: exit status 2 and a hint to run --help. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** Parses a non-negative integer given in decimal or 0x-hex, within [0, max]. */
export function parseUint(value: string | undefined, flag: string, max: number): number {
  if (value === undefined) throw new UsageError(`missing --${flag}`);
  const n = /^0x[0-9a-f]+$/i.test(value)
    ? Number.parseInt(value.slice(2), 16)
    : /^\d+$/.test(value)
      ? Number(value)
      : NaN;
  if (!Number.isSafeInteger(n) || n < 0 || n > max) throw new UsageError(`--${flag} must be an integer in [0, ${max}]`);
  return n;
}

/** An id given on the command line, checked against the id rule (docs/PROTOCOL.md §14) before anything is asked. */
export function idArgument(value: string, what: string): string {
  const problem = deviceIdProblem(value);
  if (problem) throw new UsageError(`${what} ${JSON.stringify(value)} is not valid: ${problem}`);
  return value;
}

export function requireFlag(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') throw new UsageError(`missing --${flag}`);
  return value;
}
