// Suite negotiation end to end: a chip without GHASH (SM4-CTR-HMAC-SM3 only) declares it at its fill, the key
// service records it and puts it in the device's token, and the broker seals downlink in that suite.
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SecurityChip } from '../../hsm-emulator/chip.js';
import { FillingMachine } from '../../hsm-emulator/filling-machine.js';
import { Qrng } from '../../hsm-emulator/qrng.js';
import { EnvelopeKey, parseEnvelope, sealEnvelope, type SuiteId } from '../../protocol/index.js';
import { FAST_KDF, TEST_PIN } from '../helpers/chip.js';
import { brokerClient, removeDir, tempDir } from '../helpers/kms.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
const dir = tempDir('qkey-suites-');
beforeAll(async () => {
  sys = await startTestSystem();
});
afterAll(async () => {
  await sys.stop();
  removeDir(dir);
});

async function chipWith(deviceId: string, suites: SuiteId[]) {
  const chip = SecurityChip.create(join(dir, `${deviceId}.chip`), {
    deviceId,
    pin: TEST_PIN,
    kdfIterations: FAST_KDF,
    suites,
  });
  await new FillingMachine(new Qrng(), sys.kms.admin).fill(chip, { up: 4, down: 4 });
  return chip;
}

function tokenSuites(token: string): unknown {
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).suites;
}

it.each([
  { suites: [2] as SuiteId[], expected: 2 },
  { suites: [1, 2] as SuiteId[], expected: 1 },
  { suites: [1] as SuiteId[], expected: 1 },
])('a chip declaring suites $suites gets uplink and downlink in suite $expected', async ({ suites, expected }) => {
  const id = `dev-suites-${suites.join('-')}`;
  const chip = await chipWith(id, suites);
  expect(chip.status().suites).toEqual(suites);
  expect((await sys.kms.admin.device(id)).suites).toEqual(suites);
  expect(tokenSuites(await sys.deviceToken(chip))).toEqual(suites);

  const app = await sys.connectApp(`app-${id}`, {
    subscribe: [`devices/${id}/up/#`],
    publish: [`devices/${id}/down/#`],
  });
  await app.subscribeAsync(`devices/${id}/up/#`);
  const dev = await sys.connectDevice(chip);
  const down = `devices/${id}/down/cmd`;
  await dev.subscribeAsync(down, { qos: 1 });

  const upTopic = `devices/${id}/up/t`;
  const envelope = Buffer.from(chip.sealUplink(Buffer.from('uplink ok'), upTopic));
  expect(parseEnvelope(envelope).suite).toBe(expected);
  const got = nextMessage(app);
  await dev.publishAsync(upTopic, envelope, { qos: 1 });
  expect((await got).payload.toString()).toBe('uplink ok');

  const cmd = nextMessage(dev);
  await app.publishAsync(down, Buffer.from('downlink ok'), { qos: 1 });
  const sealed = (await cmd).payload;
  expect(parseEnvelope(sealed).suite).toBe(expected);
  expect(Buffer.from(chip.openDownlink(sealed, down)).toString()).toBe('downlink ok');
  await dev.endAsync();
  await app.endAsync();
});

it('a chip without GHASH refuses an SM4-GCM envelope under its own key, and opens the same in its suite', async () => {
  const chip = await chipWith('dev-no-ghash', [2]);
  chip.beginSession();
  const broker = await brokerClient(sys.kms);
  const delivered = (await broker.encKeys('dev-no-ghash', 1, 'test-session')).keys[0]!;
  const key = new EnvelopeKey(Buffer.from(delivered.key, 'base64'));
  const topic = 'devices/dev-no-ghash/down/cmd';
  const seal = (suite: SuiteId, seq: number) =>
    sealEnvelope(Buffer.from('reboot'), {
      key,
      keyIndex: delivered.key_ID_extension!.qkey_key_index!,
      seq,
      suite,
      deviceId: 'dev-no-ghash',
      topic,
      direction: 'down',
    });
  expect(() => chip.openDownlink(seal(1, 0), topic)).toThrow(expect.objectContaining({ code: 'PROTO_ERR_SUITE' }));
  expect(Buffer.from(chip.openDownlink(seal(2, 1), topic)).toString()).toBe('reboot');
});
