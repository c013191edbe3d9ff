// SIGKILL a process that is rewriting a chip file as fast as it can: the file always opens, old or new, never damaged.
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { afterAll, expect, it } from 'vitest';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import { fillLocally, newChip, TEST_PIN } from '../helpers/chip.js';
import { removeDir } from '../helpers/kms.js';

const CHIP_JS = new URL('../../dist/hsm-emulator/chip.js', import.meta.url).href;
// Each turn of the loop is at least one atomic file replacement (session start, sequence reservation).
const WRITER = `
const { SecurityChip } = await import(${JSON.stringify(CHIP_JS)});
const chip = SecurityChip.open(process.argv[1], process.argv[2], { rotation: { messages: 1 } });
process.stdout.write('ready\\n');
for (;;) {
  chip.beginSession();
  chip.sealUplink(new Uint8Array([1, 2, 3]), 'devices/dev-kill/up/t');
  chip.sealUplink(new Uint8Array([4]), 'devices/dev-kill/up/t');
}`;

const made = newChip('dev-kill');
afterAll(() => removeDir(made.dir));

it('kill -9 at 15 random moments of a write storm: every time the chip opens and has not gone back in time', async () => {
  fillLocally(made.chip, 2000, 4);
  made.chip.close();
  let lastSessions = 0;
  let lastUplink = 2000;
  for (let round = 0; round < 15; round++) {
    const child = spawn(process.execPath, ['--input-type=module', '-e', WRITER, made.path, TEST_PIN], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`writer exited with ${code}: ${err}`)));
    });
    await new Promise((r) => setTimeout(r, 5 + Math.floor(Math.random() * 40)));
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    const chip = SecurityChip.open(made.path, TEST_PIN);
    const s = chip.status();
    chip.close();
    expect(s.sessions).toBeGreaterThanOrEqual(lastSessions);
    expect(s.uplinkKeys).toBeLessThanOrEqual(lastUplink); // a used key never comes back
    lastSessions = s.sessions;
    lastUplink = s.uplinkKeys;
  }
  expect(lastSessions).toBeGreaterThan(0);
  // Temp files of killed writes may remain next to the chip; they are never read.
  expect(readdirSync(made.dir).filter((f) => !f.includes('.tmp-'))).toEqual(['dev-kill.chip']);
}, 120_000);
