// Client ids are owned: a device's id only with that device's token, an application's ids only under
// `<appId>/`; no principal takes over another's connection or persistent session.
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawMqtt } from '../helpers/raw-mqtt.js';
import { nextMessage, startTestSystem, type TestSystem } from '../helpers/system.js';

let sys: TestSystem;
beforeAll(async () => {
  sys = await startTestSystem();
});
afterAll(async () => {
  await sys.stop();
});

async function appToken(appId: string): Promise<string> {
  const { client_secret } = await sys.kms.admin.registerApp(appId, {
    publish: ['devices/+/down/#'],
    subscribe: ['devices/+/up/#'],
  });
  return (await sys.kms.anon.clientToken(appId, client_secret)).access_token;
}

async function connack(clientId: string, username: string, password: string, clean = true): Promise<number> {
  const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, { clientId, username, password, clean });
  raw.destroy();
  return returnCode;
}

describe('applications', () => {
  it('connect only with client ids under <appId>/ (CONNACK 5 otherwise, 2 for a malformed one)', async () => {
    const token = await appToken('app-ns');
    await appToken('app-other');
    expect(await connack('app-ns/dashboard', 'app-ns', token)).toBe(0);
    expect(await connack('app-ns/a/b', 'app-ns', token)).toBe(0);
    expect(await connack('app-ns', 'app-ns', token)).toBe(5);
    // No name after '/': a client id no principal can have, refused before the token is looked at (§14).
    expect(await connack('app-ns/', 'app-ns', token)).toBe(2);
    expect(await connack('app-nsx/1', 'app-ns', token)).toBe(5);
    expect(await connack('app-other/1', 'app-ns', token)).toBe(5);
    // ':' may occur in device ids, so it cannot separate namespaces.
    expect(await connack('app-ns:1', 'app-ns', token)).toBe(5);
  });

  it('an empty client id (clean session) is given one under <appId>/ [MQTT-3.1.3-6]', async () => {
    const token = await appToken('app-anon');
    const { raw, returnCode } = await RawMqtt.connect(sys.mqttUrl, {
      clientId: '',
      username: 'app-anon',
      password: token,
    });
    expect(returnCode).toBe(0);
    const ids = Object.keys((sys.broker.aedes as unknown as { clients: Record<string, unknown> }).clients);
    expect(ids.filter((id) => id.startsWith('app-anon/'))).toHaveLength(1);
    expect(ids.some((id) => id.startsWith('aedes_'))).toBe(false);
    raw.destroy();
  });

  it("cannot use a device's id: the device stays connected", async () => {
    const chip = await sys.device('dev-victim');
    const dev = await sys.connectDevice(chip);
    const token = await appToken('app-thief');
    expect(await connack('dev-victim', 'app-thief', token)).toBe(5);
    expect(await connack('dev-victim', 'app-thief', token, false)).toBe(5);
    // Still connected: a command reaches it.
    await dev.subscribeAsync('devices/dev-victim/down/#', { qos: 1 });
    const got = nextMessage(dev);
    const sender = await sys.connectApp('app-sender-1');
    await sender.publishAsync('devices/dev-victim/down/cmd', 'still here', { qos: 1 });
    const m = await got;
    expect(Buffer.from(chip.openDownlink(m.payload, m.topic)).toString()).toBe('still here');
    expect(dev.connected).toBe(true);
    await dev.endAsync();
  });

  it("cannot take over a device's persistent session: a command queued at QoS 1 is delivered to the device", async () => {
    const chip = await sys.device('dev-queued');
    const first = await sys.connectDevice(chip, { clean: false });
    await first.subscribeAsync('devices/dev-queued/down/#', { qos: 1 });
    await first.endAsync();
    const sender = await sys.connectApp('app-sender-2');
    await sender.publishAsync('devices/dev-queued/down/cmd', 'queued', { qos: 1 });
    const token = await appToken('app-hijack');
    expect(await connack('dev-queued', 'app-hijack', token, false)).toBe(5);
    const got: string[] = [];
    const dev = await sys.connectDevice(chip, { clean: false }, (c) =>
      c.on('message', (t, p) => got.push(Buffer.from(chip.openDownlink(p, t)).toString())),
    );
    for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(got).toEqual(['queued']);
    await dev.endAsync();
  });

  it("cannot take over another application's connection", async () => {
    const owner = await sys.connectApp('app-owner');
    const token = await appToken('app-intruder');
    expect(await connack('app-owner/test', 'app-intruder', token)).toBe(5);
    expect(owner.connected).toBe(true);
  });
});

describe('devices', () => {
  it("a device token under another device's id or an application's id is refused; its own id works", async () => {
    const a = await sys.device('dev-own');
    await sys.device('dev-neighbour');
    const token = await sys.deviceToken(a);
    expect(await connack('dev-neighbour', 'dev-own', token)).toBe(5);
    expect(await connack('app-ns/dashboard', 'dev-own', token)).toBe(5);
    expect(await connack('dev-neighbour', 'dev-neighbour', token)).toBe(4);
    a.beginSession();
    const ok = await mqtt.connectAsync(sys.mqttUrl, {
      clientId: 'dev-own',
      username: 'dev-own',
      password: token,
      reconnectPeriod: 0,
    });
    await ok.endAsync();
  });
});
