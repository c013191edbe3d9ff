// `qkey device publish|listen` against a real key service and broker: a chip file publishes one sealed message an
// application reads in plaintext, and prints the commands an application sends it.
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { main } from '../../cli/qkey.js';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import { runQkey } from '../helpers/cli.js';
import { runQkeyProcess } from '../helpers/process.js';
import { removeDir, tempDir } from '../helpers/kms.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

const PIN = '11235';
const dir = tempDir('qkey-device-cli-');
const chip = join(dir, 'dev-cli-dev.chip');
let sys: TestSystem;
let common: string[];

beforeAll(async () => {
  sys = await startTestSystem();
  process.env.QKEY_CHIP_PIN = PIN;
  common = ['--chip', chip, '--kms', sys.kms.url];
  expect(
    (await runQkey('chip', 'init', '--chip', chip, '--device', 'dev-cli-dev', '--kdf-iterations', '1000')).code,
  ).toBe(0);
  const filled = await runQkey(
    'chip',
    'fill',
    ...common,
    '--token',
    'test-admin-token',
    '--data',
    dir,
    '--up',
    '8',
    '--down',
    '16',
  );
  expect(filled.code, filled.err).toBe(0);
}, 60_000);
afterAll(async () => {
  delete process.env.QKEY_CHIP_PIN;
  await sys.stop();
  removeDir(dir);
});

it('publish: one sealed message under a fresh session key, read in plaintext by an application', async () => {
  const app = await sys.connectApp('app-cli-dev', { subscribe: ['devices/dev-cli-dev/up/#'] });
  await app.subscribeAsync('devices/dev-cli-dev/up/#', { qos: 1 });
  const got = nextMessage(app);
  const r = await runQkey(
    'device',
    'publish',
    ...common,
    '--broker',
    sys.mqttUrl,
    '--topic',
    'telemetry',
    '--message',
    '{"t":21.5}',
  );
  expect(r.code, r.err).toBe(0);
  expect(r.out).toMatch(
    /^published 10 bytes on devices\/dev-cli-dev\/up\/telemetry \(envelope 36 bytes, key index \d+\)$/,
  );
  expect(await got).toMatchObject({ topic: 'devices/dev-cli-dev/up/telemetry' });
  expect((await got).payload.toString()).toBe('{"t":21.5}');
  // A second run is a second session: the chip moved on to its next uplink key.
  const again = await runQkey(
    'device',
    'publish',
    ...common,
    '--broker',
    sys.mqttUrl,
    '--topic',
    'devices/dev-cli-dev/up/x',
    '--message-hex',
    '00ff',
  );
  expect(again.code, again.err).toBe(0);
  const index = (s: string) => Number(/key index (\d+)/.exec(s)![1]);
  expect(index(again.out)).toBeGreaterThan(index(r.out));
  await app.endAsync();
});

it('listen: prints each command the chip opens, and stops after --count', async () => {
  const app = await sys.connectApp('app-cli-cmd', { publish: ['devices/dev-cli-dev/down/#'] });
  const out: string[] = [];
  let listening!: () => void;
  const ready = new Promise<void>((r) => (listening = r));
  const run = main(['device', 'listen', ...common, '--broker', sys.mqttUrl, '--count', '2'], {
    out: (l) => out.push(l),
    err: (l) => (l.startsWith('listening on') ? listening() : out.push(`err: ${l}`)),
  });
  await ready;
  await app.publishAsync('devices/dev-cli-dev/down/cmd', 'reboot', { qos: 1 });
  await app.publishAsync('devices/dev-cli-dev/down/cfg/rate', 'rate=5', { qos: 1 });
  expect(await Promise.race([run, new Promise((r) => setTimeout(() => r(out.join('|')), 8000))])).toBe(0);
  expect(out).toEqual(['devices/dev-cli-dev/down/cmd reboot', 'devices/dev-cli-dev/down/cfg/rate rate=5']);
  await app.endAsync();
});

it('refuses bad usage with exit 2, and a chip without a login key or a wrong PIN with exit 1 naming the code', async () => {
  expect((await runQkey('device', 'publish', ...common, '--message', 'x')).code).toBe(2);
  expect((await runQkey('device', 'publish', ...common, '--topic', 't')).code).toBe(2);
  expect(
    (await runQkey('device', 'publish', ...common, '--topic', 't', '--message', 'x', '--message-hex', '00')).code,
  ).toBe(2);
  expect((await runQkey('device', 'wave', ...common)).code).toBe(2);
  const empty = join(dir, 'empty.chip');
  SecurityChip.create(empty, { deviceId: 'dev-empty', pin: PIN, kdfIterations: 1000 }).close();
  const r = await runQkey(
    'device',
    'publish',
    '--chip',
    empty,
    '--kms',
    sys.kms.url,
    '--broker',
    sys.mqttUrl,
    '--topic',
    't',
    '--message',
    'x',
  );
  expect(r).toMatchObject({ code: 1 });
  expect(r.err).toMatch(/CHIP_ERR_NO_LOGIN_KEY|KMS_ERR/);
  process.env.QKEY_CHIP_PIN = '00000';
  try {
    const wrong = await runQkey(
      'device',
      'publish',
      ...common,
      '--broker',
      sys.mqttUrl,
      '--topic',
      't',
      '--message',
      'x',
    );
    expect(wrong.code).toBe(1);
    expect(wrong.err).toContain('CHIP_ERR_PIN');
  } finally {
    process.env.QKEY_CHIP_PIN = PIN;
  }
});

it('publish refused by the policy: exit 1 naming the reason, and the process ends', async () => {
  const { version } = await sys.kms.admin.setPolicy('cli-no-retain', {
    role: 'device',
    filter: 'devices/+/up/config',
    encryption: 'required',
    retain: false,
  });
  while (sys.broker.policy.current.version < version) await new Promise((r) => setTimeout(r, 50));
  const args = ['device', 'publish', ...common, '--broker', sys.mqttUrl, '--topic', 'config', '--message', 'x'];
  // In a process of its own: a promise left pending when the connection closes ends Node with exit 13.
  const r = await runQkeyProcess([...args, '--retain'], { QKEY_CHIP_PIN: PIN });
  expect(r.err).toMatch(/refused the message \(policy\)/);
  expect(r.code).toBe(1);
  await sys.kms.admin.deletePolicy('cli-no-retain');
}, 30_000);
