// Reads a chip PIN: from QKEY_CHIP_PIN, else from a prompt on the terminal without echo.
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { UsageError } from './io.js';

export async function readPin(prompt = 'Chip PIN: ', env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (env.QKEY_CHIP_PIN) return env.QKEY_CHIP_PIN;
  if (!process.stdin.isTTY) throw new UsageError('no PIN: set QKEY_CHIP_PIN or run on a terminal to be prompted');
  return (await promptHidden([prompt]))[0]!;
}

/** A new PIN: from QKEY_CHIP_PIN, else typed twice on the terminal; a mismatch is refused. */
export async function readNewPin(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (env.QKEY_CHIP_PIN) return env.QKEY_CHIP_PIN;
  if (!process.stdin.isTTY) throw new UsageError('no PIN: set QKEY_CHIP_PIN or run on a terminal to be prompted');
  const [first, second] = await promptHidden(['New chip PIN: ', 'Repeat the PIN: ']);
  if (first !== second) throw new UsageError('the two PINs differ; nothing was written');
  return first!;
}

/** Asks each question in turn on one readline interface (so typed-ahead lines are not lost), without echo. */
function promptHidden(prompts: string[]): Promise<string[]> {
  let muted = false;
  const output = new Writable({
    write(chunk, _enc, cb) {
      if (!muted) process.stderr.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input: process.stdin, output, terminal: true });
  const answers: string[] = [];
  return new Promise((resolve) => {
    const ask = () => {
      muted = false;
      rl.question(prompts[answers.length]!, (answer) => {
        process.stderr.write('\n');
        answers.push(answer);
        if (answers.length < prompts.length) ask();
        else {
          rl.close();
          resolve(answers);
        }
      });
      muted = true;
    };
    ask();
  });
}
