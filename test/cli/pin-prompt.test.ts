// `qkey chip init` on a real terminal (a pty from util-linux `script`): the new PIN is asked twice, a mismatch refused.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { QKEY_BIN } from '../helpers/process.js';

const hasScript = spawnSync('script', ['--version']).status === 0;
const dir = tempDir('qkey-pty-');
afterAll(() => removeDir(dir));

/** Runs `qkey chip init` on a pty and answers each prompt as it appears. */
function initOnTerminal(chip: string, answers: string[]): Promise<{ code: number | null; out: string }> {
  const env = { ...process.env };
  delete env.QKEY_CHIP_PIN;
  const cmd = `'${process.execPath}' '${QKEY_BIN}' chip init --chip '${chip}' --device dev-pty --kdf-iterations 1000`;
  const child = spawn('script', ['-qec', cmd, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let answered = 0;
  const prompts = [/New chip PIN: /g, /Repeat the PIN: /g];
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    while (answered < answers.length && (out.match(prompts[answered]!) ?? []).length > 0) {
      child.stdin.write(`${answers[answered]}\r`);
      answered++;
    }
  });
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, out })));
}

it.skipIf(!hasScript)(
  'asks for the PIN twice and writes a chip that opens with it',
  async () => {
    const chip = join(dir, 'ok.chip');
    const r = await initOnTerminal(chip, ['8642', '8642']);
    expect(r.out).toContain('Repeat the PIN: ');
    expect(r.out).not.toContain('8642'); // no echo
    expect(r.code).toBe(0);
    SecurityChip.open(chip, '8642').close();
  },
  30_000,
);

it.skipIf(!hasScript)(
  'refuses two different PINs and writes nothing',
  async () => {
    const chip = join(dir, 'mismatch.chip');
    const r = await initOnTerminal(chip, ['8642', '8643']);
    expect(r.code).toBe(2);
    expect(r.out).toContain('the two PINs differ');
    expect(existsSync(chip)).toBe(false);
  },
  30_000,
);
