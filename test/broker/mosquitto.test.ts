// Interop: mosquitto_sub and mosquitto_pub (Debian mosquitto-clients, installed by .ci/run) as application clients.
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

const run = promisify(execFile);
let sys: TestSystem;
let host: string;
let port: string;

beforeAll(async () => {
  sys = await startTestSystem();
  ({ hostname: host, port } = new URL(sys.mqttUrl));
});
afterAll(async () => {
  await sys.stop();
});

async function appToken(appId: string): Promise<string> {
  const { client_secret } = await sys.kms.admin.registerApp(appId);
  return (await sys.kms.anon.clientToken(appId, client_secret)).access_token;
}

it('mosquitto_sub receives a device’s telemetry as plaintext', async () => {
  const token = await appToken('mosq-sub');
  const sub = spawn('mosquitto_sub', [
    '-h',
    host,
    '-p',
    port,
    '-i',
    'mosq-sub/1',
    '-u',
    'mosq-sub',
    '-P',
    token,
    '-t',
    'devices/+/up/#',
    '-q',
    '1',
    '-C',
    '1',
    '-W',
    '10',
    '-v',
  ]);
  let out = '';
  sub.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => sub.once('exit', r));
  await new Promise((r) => setTimeout(r, 500)); // let it subscribe
  const chip = await sys.device('dev-mosq');
  const dev = await sys.connectDevice(chip);
  await dev.publishAsync(
    'devices/dev-mosq/up/telemetry',
    Buffer.from(chip.sealUplink(Buffer.from('{"t":21.5}'), 'devices/dev-mosq/up/telemetry')),
    { qos: 1 },
  );
  expect(await exited).toBe(0);
  expect(out.trim()).toBe('devices/dev-mosq/up/telemetry {"t":21.5}');
  await dev.endAsync();
});

it('mosquitto_pub sends a command that reaches the device sealed, and a wrong token is refused', async () => {
  const token = await appToken('mosq-pub');
  const chip = await sys.device('dev-mosq-2');
  const dev = await sys.connectDevice(chip);
  await dev.subscribeAsync('devices/dev-mosq-2/down/#', { qos: 1 });
  const got = nextMessage(dev);
  await run('mosquitto_pub', [
    '-h',
    host,
    '-p',
    port,
    '-i',
    'mosq-pub/1',
    '-u',
    'mosq-pub',
    '-P',
    token,
    '-t',
    'devices/dev-mosq-2/down/cmd',
    '-q',
    '1',
    '-m',
    'reboot',
  ]);
  const m = await got;
  expect(m.payload.toString()).not.toContain('reboot');
  expect(Buffer.from(chip.openDownlink(m.payload, m.topic)).toString()).toBe('reboot');
  await expect(
    run('mosquitto_pub', [
      '-h',
      host,
      '-p',
      port,
      '-i',
      'mosq-pub/1',
      '-u',
      'mosq-pub',
      '-P',
      'wrong',
      '-t',
      'x',
      '-m',
      'y',
    ]),
  ).rejects.toMatchObject({
    stderr: expect.stringMatching(/not authori[sz]ed|bad user name or password|Connection Refused/i),
  });
  await dev.endAsync();
});
