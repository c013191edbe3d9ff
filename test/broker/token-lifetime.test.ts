// A token is checked at CONNECT only (docs/PROTOCOL.md §18): a connection outlives its token's expiry and keeps
// working both ways, while the same token can no longer open a connection. The broker's clock is moved forward.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
let ahead = 0;
const now = () => Math.floor(Date.now() / 1000) + ahead;
beforeAll(async () => {
  sys = await startTestSystem({}, { now });
});
afterAll(async () => {
  await sys.stop();
});

it('a device connection stays open and in use after its token expired; the token cannot connect again', async () => {
  const app = await sys.connectApp('app-lifetime');
  await app.subscribeAsync('devices/+/up/#', { qos: 1 });
  const chip = await sys.device('dev-lifetime');
  const token = await sys.deviceToken(chip);
  chip.beginSession();
  const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
    clientId: chip.deviceId,
    username: chip.deviceId,
    password: token,
  });
  expect(returnCode).toBe(0);
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'devices/dev-lifetime/down/#', qos: 1 }] });
  await raw.next('suback');

  ahead = 3600; // the device token (600 s) and the application's (3600 s) are both past expiry and clock skew
  const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { exp: number };
  expect(claims.exp + 30).toBeLessThan(now());

  const topic = 'devices/dev-lifetime/up/t';
  const telemetry = nextMessage(app, 5000, (t) => t === topic);
  raw.send({
    cmd: 'publish',
    topic,
    payload: Buffer.from(chip.sealUplink(Buffer.from('still here'), topic)),
    qos: 1,
    messageId: 2,
    retain: false,
    dup: false,
  });
  await raw.next('puback');
  expect((await telemetry).payload.toString()).toBe('still here');

  await app.publishAsync('devices/dev-lifetime/down/cmd', 'still listening', { qos: 1 });
  const command = (await raw.next('publish')) as { topic: string; payload: Buffer };
  expect(Buffer.from(chip.openDownlink(command.payload, command.topic)).toString()).toBe('still listening');
  raw.send({ cmd: 'pingreq' });
  await raw.next('pingresp');

  const again = await RawMqtt.connect(sys.mqttUrl, {
    clientId: chip.deviceId,
    username: chip.deviceId,
    password: token,
  });
  expect(again.returnCode).toBe(4); // TOKEN_ERR_EXPIRED
  await again.raw.closedWithin(5000);
  raw.send({ cmd: 'pingreq' }); // the refused CONNECT took nothing over
  await raw.next('pingresp');
  raw.destroy();
  await app.endAsync();
});
