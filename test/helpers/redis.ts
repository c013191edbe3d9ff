// redis-server (the Debian package) as a child process on a free loopback port in a temporary folder, for the tests
// of several brokers sharing one Redis.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { removeDir, tempDir } from './kms.js';
import { freePort } from './ports.js';

export interface TestRedis {
  url: string;
  stop(): Promise<void>;
}

const BIN = existsSync('/usr/bin/redis-server') ? '/usr/bin/redis-server' : 'redis-server';

/** Starts redis-server (no snapshots; append-only file fsynced every write) and resolves once it accepts clients. */
export async function startRedis(): Promise<TestRedis> {
  for (let attempt = 0; ; attempt++) {
    const dir = tempDir('qkey-redis-');
    const port = await freePort();
    const proc = spawn(
      BIN,
      ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'yes'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    proc.once('error', () => undefined);
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    let out = '';
    const ready = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 10_000);
      proc.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('Ready to accept connections')) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      void exited.then(() => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    if (ready)
      return {
        url: `redis://127.0.0.1:${port}`,
        async stop() {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
          await exited;
          removeDir(dir);
        },
      };
    if (proc.exitCode === null) proc.kill('SIGKILL');
    await exited;
    removeDir(dir);
    // Another process took the port between freePort() and redis-server's bind: try another.
    if (attempt >= 3) throw new Error(`redis-server did not start:\n${out}`);
  }
}
