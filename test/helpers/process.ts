// Runs the built `qkey` binary as a child process and waits for a line announcing readiness.
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const QKEY_BIN = fileURLToPath(new URL('../../dist/cli/bin.js', import.meta.url));

export interface QkeyProcess {
  proc: ChildProcess;
  /** The first capture group of the ready pattern (for example a URL). */
  ready: string;
  output(): string;
  /** Sends `signal` and waits for the process to exit. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function spawnQkey(
  args: string[],
  ready: RegExp,
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 20_000,
  nodeArgs: string[] = [],
): Promise<QkeyProcess> {
  const proc = spawn(process.execPath, [...nodeArgs, QKEY_BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`qkey ${args.join(' ')} not ready after ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = ready.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({
          proc,
          ready: m[1] ?? m[0],
          output: () => out,
          async stop(signal: NodeJS.Signals = 'SIGTERM') {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
            return exited;
          },
        });
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`qkey ${args.join(' ')} exited with ${code} before it was ready:\n${out}`));
    });
  });
}

/** Runs the built `qkey` binary to its end: its exit status and what it printed (killed after `timeoutMs`). */
export function runQkeyProcess(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 20_000,
): Promise<{ code: number | null; out: string; err: string }> {
  const proc = spawn(process.execPath, [QKEY_BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) =>
    proc.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    }),
  );
}
