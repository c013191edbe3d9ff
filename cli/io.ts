// The I/O a CLI command writes to, the exit statuses every command shares, and the argument checks they share.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { KmsHttpError, KmsUnreachableError } from '../kms-api/client.js';
import { deviceIdProblem } from '../protocol/index.js';

export interface CliIo {
  out(line: string): void;
  err(line: string): void;
}

/** Output piped into a reader that stopped (`qkey ... | head`) is dropped, never an EPIPE crash. */
const closed = { stdout: false, stderr: false };
export const processIo: CliIo = {
  out: (line) => void (closed.stdout || process.stdout.write(`${line}\n`)),
  err: (line) => void (closed.stderr || process.stderr.write(`${line}\n`)),
};

/**
 * Once the reader of stdout or stderr has gone, further output is dropped, and a running service is asked to
 * stop as on SIGTERM, so it releases what it holds (the data folder's lock, its ports) and exits quietly.
 */
export function quietOnBrokenPipe(): void {
  for (const name of ['stdout', 'stderr'] as const) {
    process[name].on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
      if (closed[name]) return;
      closed[name] = true;
      pipeBroken = true;
      process.emit('SIGTERM', 'SIGTERM');
    });
  }
}

let pipeBroken = false;

/** A command's watch for a stop: `stopped` settles on the first; `dispose` ends the watch when the command ends. */
export interface StopWatch {
  stopped: Promise<NodeJS.Signals>;
  /** Removes the signal handlers, so a command that ended by itself leaves Ctrl-C to Node again. Idempotent. */
  dispose(): void;
}

/**
 * Watches for the command's stop: Ctrl-C (SIGINT), SIGTERM, or a reader of its output that went away (also when
 * that happened before this was asked, during start-up).
 */
export function stopRequested(): StopWatch {
  let dispose = () => undefined as void;
  const stopped = new Promise<NodeJS.Signals>((resolve) => {
    if (pipeBroken) return resolve('SIGTERM');
    const stop = (signal: NodeJS.Signals) => {
      dispose();
      resolve(signal);
    };
    dispose = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  return { stopped, dispose: () => dispose() };
}

/** A usage mistake: exit status 2 and a hint to run --help. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** A failure to set up what was asked (a simulation's devices, for example) before its work began: exit 4. */
export class SetupError extends Error {
  override name = 'SetupError';
}

export const EXIT_OK = 0;
/** Refused, lost or failed: the peer answered and said no, or what was checked did not hold. */
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
/** A peer (key service, broker) could not be reached at all. */
export const EXIT_UNREACHABLE = 3;
export const EXIT_SETUP = 4;

/** True when a command line asks for help: --help, -h, or `help` as the first word after the command. */
export function wantsHelp(argv: readonly string[]): boolean {
  return argv[0] === 'help' || argv.includes('--help') || argv.includes('-h');
}

/**
 * parseArgs (strict) with its errors rewritten in the CLI's words: an unknown option, a missing or dash-leading
 * value, a value given to a switch, an unexpected word.
 */
export function parseCommandLine<const T extends Omit<ParseArgsConfig, 'args' | 'strict'>>(
  argv: string[],
  config: T,
): ReturnType<typeof parseArgs<T & { args: string[]; strict: true }>> {
  try {
    return parseArgs({ ...config, args: argv, strict: true });
  } catch (err) {
    throw new UsageError(parseArgsMessage(err as NodeJS.ErrnoException));
  }
}

export function parseArgsMessage(err: NodeJS.ErrnoException): string {
  const option = /'(--?[^' =]+)/.exec(err.message)?.[1] ?? '';
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${option}`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument ${/'([^']*)'/.exec(err.message)?.[1] ?? ''}`.trimEnd();
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      if (/does not take an argument/.test(err.message)) return `${option} takes no value`;
      if (/ambiguous/.test(err.message))
        return `${option} needs a value; to give one that starts with "-", write ${option}=<value>`;
      return `${option} needs a value`;
    default:
      return err.message;
  }
}

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

/** An integer flag within [min, max], in decimal; anything else is a usage error naming the flag and the range. */
export function intFlag(value: string, flag: string, min: number, max: number): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max)
    throw new UsageError(`--${flag} must be a whole number from ${min} to ${max}, not ${JSON.stringify(value)}`);
  return n;
}

/** A decimal number flag within [min, max] (rates, seconds). */
export function numberFlag(value: string, flag: string, min: number, max: number): number {
  const n = /^\d+(\.\d+)?$|^\.\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isFinite(n) || n < min || n > max)
    throw new UsageError(`--${flag} must be a number from ${min} to ${max}, not ${JSON.stringify(value)}`);
  return n;
}

/** A TCP port flag: 0 (any free port) to 65535. */
export function portFlag(value: string, flag: string): number {
  return intFlag(value, flag, 0, 65_535);
}

const URL_SCHEMES = {
  kms: ['http:', 'https:'],
  broker: ['mqtt:', 'mqtts:', 'tcp:', 'ssl:', 'tls:', 'ws:', 'wss:'],
} as const;

/**
 * A URL of the key service or of the broker, checked before anything is asked, so that `localhost:7070` (read by
 * URL parsers as the scheme "localhost:") gets a message naming the missing scheme instead of "fetch failed".
 */
export function urlFlag(value: string, kind: keyof typeof URL_SCHEMES, source: string): string {
  const schemes: readonly string[] = URL_SCHEMES[kind];
  const example = `${schemes[0]}//${value.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '')}`;
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || !schemes.includes(url.protocol) || !url.host)
    throw new UsageError(
      /^[a-z][a-z0-9+.-]*:\/\//i.test(value)
        ? `${source} ${JSON.stringify(value)} is not a ${kind === 'kms' ? 'key service' : 'broker'} URL: the scheme must be ${schemes.map((s) => s.slice(0, -1)).join(', ')}`
        : `${source} ${JSON.stringify(value)} has no scheme: write ${example}`,
    );
  return value;
}

/** The key service's URL from --kms, else QKEY_KMS_URL, else the default; its source is named in errors. */
export function kmsUrlFrom(flag: string | undefined, fallback: string, env: NodeJS.ProcessEnv = process.env): string {
  if (flag !== undefined) return urlFlag(flag, 'kms', '--kms');
  if (env.QKEY_KMS_URL) return urlFlag(env.QKEY_KMS_URL, 'kms', 'QKEY_KMS_URL');
  return fallback;
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

/**
 * Maps the errors every command shares to a message and an exit status: usage 2, unreachable peer 3, setup 4,
 * a refusal by the key service 1 with its error code. Returns undefined for errors the command handles itself.
 */
export function sharedFailure(err: unknown, prefix: string, io: CliIo): number | undefined {
  if (err instanceof UsageError) {
    io.err(`${prefix}: ${err.message} (see ${prefix.split(' ').slice(0, 2).join(' ')} --help)`);
    return EXIT_USAGE;
  }
  if (err instanceof KmsUnreachableError) {
    io.err(`${prefix}: ${err.message}`);
    return EXIT_UNREACHABLE;
  }
  if (err instanceof SetupError) {
    io.err(`${prefix}: ${err.message}`);
    return EXIT_SETUP;
  }
  if (err instanceof KmsHttpError) {
    io.err(`${prefix}: ${err.code}: ${err.message}`);
    return EXIT_FAILURE;
  }
  return undefined;
}

/** Exit status for an MQTT connection that failed: 3 when the broker could not be reached at all. */
export function mqttFailureStatus(err: unknown): number {
  const code = (err as { code?: string }).code;
  return code && /^(ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|EAI_AGAIN)$/.test(code)
    ? EXIT_UNREACHABLE
    : EXIT_FAILURE;
}

/** The words before the first option: `device add` in `qkey admin device add --help`. */
export function leadingWords(argv: readonly string[]): string[] {
  const words: string[] = [];
  for (const a of argv) {
    if (a.startsWith('-')) break;
    if (a !== 'help') words.push(a);
  }
  return words;
}

/**
 * A command's usage narrowed to the subcommand the user named: the blocks of its "Commands:" list that begin with
 * those words, then everything after the list (the shared options). The whole usage when nothing matches.
 */
export function narrowUsage(usage: string, command: string, words: readonly string[]): string {
  const lines = usage.split('\n');
  const start = lines.indexOf('Commands:');
  if (start < 0 || words.length === 0) return usage;
  let end = lines.indexOf('', start);
  if (end < 0) end = lines.length;
  const blocks: string[][] = [];
  for (const line of lines.slice(start + 1, end)) {
    if (/^ {2}\S/.test(line)) blocks.push([line]);
    else blocks.at(-1)?.push(line);
  }
  const prefix = words.join(' ');
  const matching = blocks.filter((b) => {
    const head = b[0]!.trim();
    return head === prefix || head.startsWith(`${prefix} `);
  });
  if (matching.length === 0) return usage;
  return [`Usage: qkey ${command} ${prefix} ...`, '', ...matching.flat(), ...lines.slice(end)].join('\n');
}
