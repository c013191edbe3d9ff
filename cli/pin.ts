// Reads a chip PIN: from QKEY_CHIP_PIN, else from a prompt on the terminal without echo.
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { UsageError } from './io.js';

export async function readPin(prompt = 'Chip PIN: ', env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (env.QKEY_CHIP_PIN) return env.QKEY_CHIP_PIN;
  if (!process.stdin.isTTY) throw new UsageError('no PIN: set QKEY_CHIP_PIN or run on a terminal to be prompted');
  let muted = false;
  const output = new Writable({
    write(chunk, _enc, cb) {
      if (!muted) process.stderr.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input: process.stdin, output, terminal: true });
  return new Promise((resolve) => {
    rl.question(prompt, (answer) => {
      rl.close();
      process.stderr.write('\n');
      resolve(answer);
    });
    muted = true;
  });
}
