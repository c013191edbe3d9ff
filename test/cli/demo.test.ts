// `qkey demo` (npm start) as a user runs it: twice on the same data folder, the second run reusing the state.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, expect, it } from 'vitest';
import { removeDir, tempDir } from '../helpers/kms.js';
import { QKEY_BIN } from '../helpers/process.js';

const run = promisify(execFile);
const dir = tempDir('qkey-demo-');
afterAll(() => removeDir(dir));

const demo = () =>
  run(
    process.execPath,
    [
      QKEY_BIN,
      'demo',
      '--data',
      dir,
      '--kms-port',
      '0',
      '--mqtt-port',
      '0',
      '--http-port',
      '0',
      '--devices',
      '2',
      '--interval',
      '200',
      '--duration',
      '5',
    ],
    {
      timeout: 60_000,
    },
  );

it('runs the whole system, shows telemetry and commands, and reuses its state on the next run', async () => {
  const first = await demo();
  expect(first.stdout).toMatch(/demo-device-0001: filled 256 up \+ 256 down keys/);
  expect(first.stdout).toMatch(/dashboard <- demo-device-0002 #0: [\d.]+ °C/);
  expect(first.stdout).toMatch(/demo-device-000\d <- command "set-interval 200ms #1" \(opened in the chip\)/);
  expect(first.stdout).toMatch(/\[status\] online 2\/2/);
  const [, sent, received] = /stopping \(sent (\d+), dashboard received (\d+)/.exec(first.stdout)!;
  expect(Number(sent)).toBeGreaterThan(10);
  expect(Number(received)).toBeGreaterThanOrEqual(Number(sent) - 2); // the last readings may be in flight at stop
  expect(first.stderr).toBe('');

  const second = await demo();
  expect(second.stdout).toMatch(/demo-device-0001: pools are fine \(chip holds 25\d up, 2\d\d down\)/);
  expect(second.stdout).toMatch(/dashboard <- demo-device-0001 #0/);
  expect(second.stderr).toBe('');
}, 120_000);
