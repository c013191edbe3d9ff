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
      '11',
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
  // Downlink keys rotate after 2 commands: with 2 devices and a command every 5 intervals (1 s), a device's third
  // command comes at about 5 s, and the status line of 10 s shows it.
  expect(first.stdout).toMatch(/\| rotations [1-9]\d* \|/);
  // The printed client lines each have a client id of their own (a shared one would kick the other off).
  expect(first.stdout).toMatch(/mosquitto_sub .* -i demo-guest\/sub /);
  expect(first.stdout).toMatch(/mosquitto_pub .* -i demo-guest\/pub /);
  const [, sent, received] = /stopping \(sent (\d+), dashboard received (\d+)/.exec(first.stdout)!;
  expect(Number(sent)).toBeGreaterThan(10);
  expect(Number(received)).toBeGreaterThanOrEqual(Number(sent) - 2); // the last readings may be in flight at stop
  expect(first.stderr).toBe('');

  const second = await demo();
  expect(second.stdout).toMatch(/demo-device-0001: pools are fine \(chip holds 25\d up, 2\d\d down\)/);
  expect(second.stdout).toMatch(/dashboard <- demo-device-0001 #0/);
  expect(second.stderr).toBe('');
}, 120_000);
